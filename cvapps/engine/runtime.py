"""Which engine runs a model: ``--runtime torch|onnxruntime|openvino|auto`` and the OpenVINO cache.

* ``torch``: a ``.pt`` in PyTorch (the checkpoint's own numbers; what training and ``cvapps val`` of a
  ``.pt`` score). An exported model cannot run in torch.
* ``onnxruntime``: an ``.onnx`` file. ``openvino``: an OpenVINO folder, an ``.onnx`` file, or a cvapps
  ``.pt`` converted once and cached (below).
* ``auto``: on a CPU with ``cvapps[openvino]`` installed, OpenVINO (a ``.pt`` converted and cached; an
  ``.onnx`` read by OpenVINO); else the file's own runtime. A checkpoint whose task does not export, or
  whose conversion fails or does not match PyTorch, stays in torch (with a note on stderr).
* unset (None): each file in its own runtime: ``.pt`` torch, ``.onnx`` onnxruntime, folder OpenVINO.

The CLI and :func:`cvapps.load` default to ``$CVAPPS_RUNTIME``, else unset: ``auto`` is opt-in because
it changes outputs by float rounding (within the export tolerance), and existing runs keep their
numbers bit for bit unless asked.

Cache: ``$CVAPPS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/cvapps``, else ``~/.cache/cvapps``)
``/openvino/<key>/`` where key is the sha256 of the checkpoint's bytes (plus the OpenVINO version and
this format's version): a checkpoint changed on disk has another key, so it is converted again and
never served stale. A lock file per key makes concurrent runs convert once (the others wait, then load).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cvapps.engine.onnx_graph import GraphSpec
from cvapps.engine.openvino_model import (
    OPENVINO_FORMAT,
    check_converted,
    convert_model,
    is_openvino_folder,
    need_openvino,
    read_openvino_metadata,
    save_folder,
)
from cvapps.errors import CvappsError

try:  # POSIX advisory locks; elsewhere concurrent first runs may each convert (results are identical)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RUNTIMES = ("torch", "onnxruntime", "openvino", "auto")
RUNTIME_ENV = "CVAPPS_RUNTIME"
CACHE_ENV = "CVAPPS_CACHE_DIR"


def check_runtime(runtime: str | None) -> str | None:
    """``runtime`` lower-cased, or None (each file its own runtime); a one-line error for an unknown one
    (tensorrt included: no GPU build of it is tested here)."""
    if runtime is None or runtime == "":
        return None
    name = str(runtime).strip().lower()
    if name not in RUNTIMES:
        raise CvappsError(f"unknown runtime {runtime!r}; use {', '.join(RUNTIMES)}")
    return name


def default_runtime() -> str | None:
    """The runtime of the CLI and the API when none is given: ``$CVAPPS_RUNTIME``, else None."""
    value = os.environ.get(RUNTIME_ENV, "")
    try:
        return check_runtime(value)
    except CvappsError as exc:
        raise CvappsError(f"${RUNTIME_ENV}: {exc}") from None


def openvino_installed() -> bool:
    """True when ``import openvino`` works (``auto`` then prefers it on the CPU)."""
    try:
        need_openvino()
    except CvappsError:
        return False
    return True


def cache_root() -> Path:
    """Where converted models are cached (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cvapps"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(sha256: str) -> str:
    # The OpenVINO version is part of the key: an IR written by another version is converted afresh.
    ov = need_openvino()
    tag = hashlib.sha256(f"{sha256}|{ov.get_version()}|{OPENVINO_FORMAT}".encode()).hexdigest()
    return f"{sha256[:16]}-{tag[:8]}"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield


def cached_openvino(checkpoint: Path, load_torch: Callable[[], Any], log: Callable[[str], None] | None = None
                    ) -> Path:
    """The cached OpenVINO folder of ``checkpoint`` (a cvapps ``.pt``), converting it on first use.

    load_torch: loads the checkpoint in PyTorch (a :class:`~cvapps.engine.load.LoadedModel`), called
    only on a cache miss. The conversion is checked against PyTorch (the task's export tolerance) and
    its cost is logged once (``log``, default: a line on stderr). Raises CvappsError when the task
    does not export, the conversion fails or its outputs do not match.
    """
    sha = file_sha256(checkpoint)
    root = cache_root() / "openvino"
    key = cache_key(sha)
    folder = root / key
    if _valid(folder, sha):
        return folder
    with _locked(root / f"{key}.lock"):
        if _valid(folder, sha):  # another process converted it while this one waited
            return folder
        t0 = time.perf_counter()
        loaded = load_torch()
        if loaded.task.onnx is None:
            raise CvappsError(loaded.task.onnx_refusal or f"{loaded.task.describe()} does not convert to OpenVINO")
        info = {**loaded.info, "preprocessing": loaded.preprocessing, "config": loaded.raw_config,
                "class_names": loaded.class_names, "category_ids": loaded.category_ids}
        ov_model, meta = convert_model(loaded.model, loaded.task, info, checkpoint.name)
        pre = meta["preprocessing"]
        spec = GraphSpec(int(pre["imgsz"]), int(pre["in_channels"]))
        worst = check_converted(ov_model, loaded.model, loaded.task, spec)
        meta.update(source_sha256=sha, max_abs_diff=worst)
        save_folder(ov_model, meta, folder)
        (log or _stderr)(f"converted {checkpoint.name} to OpenVINO fp32 once in {time.perf_counter() - t0:.1f} s "
                         f"(max |diff| vs PyTorch {worst:.1e}); cached in {folder} (--runtime torch runs PyTorch)")
    return folder


def _valid(folder: Path, sha: str) -> bool:
    if not is_openvino_folder(folder):
        return False
    try:
        return read_openvino_metadata(folder).get("source_sha256") == sha
    except CvappsError:
        return False


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
