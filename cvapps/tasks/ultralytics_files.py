"""Reading native ultralytics model files without running code stored in them.

An ultralytics ``.pt`` is a pickled dict (``model``/``ema``: a ``DetectionModel`` object,
``train_args``, ``date``, ...). A full unpickle (what ``YOLO(path)`` does) runs any code the file
carries, so cvapps reads it with ``torch.load(weights_only=True)`` and allows only the classes
such checkpoints are made of: ``nn.Module`` subclasses from ``torch.nn.modules`` and ultralytics'
model modules (found by saving ``YOLO("yolov8n.yaml")``, ``yolo11n``, ``yolov8n-seg`` and
``yolo26n`` with ultralytics' own save and listing what ``weights_only`` asks for). A file that
needs anything else is refused unless the user trusts it (``--trust-model`` or
``CVAPPS_TRUST_MODEL=1``). Whether a file is an ultralytics model is decided by loading it this
way, never by looking for the word "ultralytics" in its bytes.

A bare published name (``yolov8n.pt``) not on disk is fetched by ultralytics' downloader (the
:data:`download` hook) and then read the same safe way; offline or with ``CVAPPS_OFFLINE=1`` it is
a one-line error saying where to put the file.
"""

from __future__ import annotations

import importlib
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvapps.errors import CheckpointError

TRUST_ENV = "CVAPPS_TRUST_MODEL"
OFFLINE_ENV = "CVAPPS_OFFLINE"  # "1": never fetch a published weights name (no network attempt at all)
if os.environ.get(OFFLINE_ENV, "") == "1":
    # ultralytics checks connectivity (DNS) when first imported, which happens after this module is
    # imported; its own offline switch skips that check.
    os.environ.setdefault("YOLO_OFFLINE", "1")
# Modules whose nn.Module classes may be rebuilt from a weights-only pickle: layers and models only
# (no loaders such as ultralytics.nn.autobackend, whose constructors read files).
SAFE_MODULES = re.compile(r"^(torch\.nn\.modules\.\w+|ultralytics\.nn\.modules\.\w+|ultralytics\.nn\.tasks)$")
# Names ultralytics publishes (and would download): yolov8n.pt, yolo11s-seg.pt, yolo26n.pt, rtdetr-l.pt ...
PUBLISHED = re.compile(r"^(yolo|rtdetr)[\w.-]*\.pt$", re.IGNORECASE)
YAML_SUFFIXES = (".yaml", ".yml")


def trusted(flag: bool = False) -> bool:
    """The user's ``--trust-model`` flag, or ``CVAPPS_TRUST_MODEL=1`` in the environment."""
    return bool(flag) or os.environ.get(TRUST_ENV, "") == "1"


def refusal(path: str | Path, why: str) -> CheckpointError:
    """The one message for a model file that would need a full (code-running) unpickle."""
    return CheckpointError(
        f"{path}: {why}; loading it would need a full unpickle, which can run code stored in the "
        f"file. If you trust this file, pass --trust-model (or set {TRUST_ENV}=1)")


def _allowed_class(name: str) -> type | None:
    module, _, attr = name.rpartition(".")
    if not SAFE_MODULES.match(module):
        return None
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None
    # Defined in that very module (not a name it imported from elsewhere) and a layer or model.
    ok = isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module
    return obj if ok else None


def load_pickled_model(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """The checkpoint dict of an ultralytics ``.pt``, read with ``weights_only=True`` under the
    allowlist (or fully unpickled when ``trust``). Raises CheckpointError (the refusal message
    for anything outside the allowlist)."""
    path = Path(path)
    if trusted(trust):
        try:
            # SECURITY: the user said they trust this file; a full unpickle runs its code.
            return _as_dict(path, torch.load(path, map_location="cpu", weights_only=False))
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything a foreign pickle raises
            raise CheckpointError(f"{path}: cannot be read as a model file ({type(exc).__name__})") from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # reads opcodes, runs nothing
    except Exception as exc:  # noqa: BLE001 - not a torch zip file, or a pickle the scan cannot read
        if zipfile.is_zipfile(path):  # a torch file whose pickle cannot be checked without running it
            raise refusal(path, f"not a cvapps checkpoint, and its pickle cannot be checked for code "
                                f"({type(exc).__name__})") from None
        raise CheckpointError(f"{path}: not a cvapps checkpoint or an ultralytics model file "
                              f"({type(exc).__name__})") from None
    classes = []
    for name in names:
        cls = _allowed_class(name)
        if cls is None:
            raise refusal(path, f"not a cvapps checkpoint, and as an ultralytics model it is refused: it references "
                                f"{name}, which is not a torch or ultralytics model class")
        classes.append(cls)
    try:
        with torch.serialization.safe_globals(classes):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler's refusals
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise refusal(path, f"not a cvapps checkpoint, and as an ultralytics model it is refused: weights_only "
                            f"loading failed ({first})") from None
    return _as_dict(path, obj)


def _as_dict(path: Path, obj: Any) -> dict[str, Any]:
    net = _net(obj) if isinstance(obj, dict) else None
    if not isinstance(net, nn.Module) or not hasattr(net, "names"):
        raise CheckpointError(f"{path}: not a cvapps checkpoint or an ultralytics model file (no model object)")
    return obj


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The float32 ultralytics model of a checkpoint dict (EMA weights when present, as ultralytics)."""
    return _net(ckpt).float()


def _net(ckpt: dict[str, Any]) -> Any:
    return ckpt["ema"] if isinstance(ckpt.get("ema"), nn.Module) else ckpt.get("model")


def model_from_yaml(spec: str | Path) -> nn.Module:
    """A randomly initialised ultralytics model from a model YAML (a file or a built-in name)."""
    from ultralytics import (
        YOLO,  # heavy optional import: only for native ultralytics models
    )

    try:
        return YOLO(str(spec)).model  # a YAML builds layers; nothing is unpickled
    except Exception as exc:  # noqa: BLE001 - ultralytics raises many kinds for a bad YAML
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{spec}: cannot build an ultralytics model from it ({first})") from None


def weights_dir() -> Path | None:
    """ultralytics' weights folder from its settings (None when unreadable)."""
    try:
        from ultralytics.utils import SETTINGS  # heavy optional import

        return Path(SETTINGS["weights_dir"])
    except Exception:  # settings unreadable: only the given path counts
        return None


def ultralytics_download(name: str, dest: Path) -> Path:
    """Fetch the published ultralytics file ``name`` (GitHub release assets) to ``dest`` with
    ultralytics' own downloader; returns the file's path."""
    from ultralytics.utils.downloads import (
        attempt_download_asset,  # heavy optional import: only when a published name is fetched
    )

    return Path(attempt_download_asset(dest))


#: The downloader ``download(name, dest) -> path`` used for published names; a module-level hook
#: so tests (or an offline mirror) can swap in their own.
download: Callable[[str, Path], Path] = ultralytics_download


def online() -> bool:
    """Whether a published name may be fetched: not with ``CVAPPS_OFFLINE=1`` (decided before any
    network use) nor ``YOLO_OFFLINE=1``; otherwise ultralytics' own connectivity check (made once,
    when ultralytics is imported)."""
    if os.environ.get(OFFLINE_ENV, "") == "1" or os.environ.get("YOLO_OFFLINE", "").lower() in ("1", "true"):
        return False
    try:
        from ultralytics.utils import (
            ONLINE,  # heavy optional import (already loaded by the native task)
        )
    except Exception:  # noqa: BLE001 - ultralytics unusable: offline, the message says where to put the file
        return False
    return bool(ONLINE)


def resolve_weights(spec: str | os.PathLike) -> Path | str:
    """The local file (or built-in .yaml name) for ``spec``.

    A bare published name (``yolov8n.pt``, ``yolo11n-seg.pt``) that is neither in the current folder
    nor in ultralytics' weights folder is fetched by :data:`download` into the weights folder when
    :func:`online`; offline, or when the fetch fails, a one-line CheckpointError says where to put it.
    """
    p = Path(str(spec))
    if p.suffix.lower() in YAML_SUFFIXES:
        return str(p)  # a file, or a built-in ultralytics config name such as yolov8n.yaml
    if p.is_file():
        return p
    wd = weights_dir()
    if wd is not None and (wd / p.name).is_file():
        return wd / p.name
    bare = p.parent == Path(".") and PUBLISHED.match(p.name) is not None
    failed = ""
    if bare and online():
        dest = (wd if wd is not None else Path(".")) / p.name
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            got = Path(download(p.name, dest))
        except Exception as exc:  # noqa: BLE001 - any network or file error: the one-line message below
            failed = f" and the download failed ({type(exc).__name__})"
        else:
            if got.is_file():
                return got
            failed = " and the download wrote no file"
    where = f"{p.resolve()}" + (f" (or {wd / p.name})" if wd is not None and p.parent == Path(".") else "")
    why = "" if not bare else failed or f" and cannot be downloaded offline ({OFFLINE_ENV}=1 or no network)"
    raise CheckpointError(
        f"ultralytics weights {spec} not found{why}: place the file at {where}, "
        f"e.g. from https://github.com/ultralytics/assets/releases, or use a .yaml model for random weights")


def load_native(spec: str | os.PathLike, trust: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """(ultralytics model in float32, its checkpoint dict; ``{}`` for a YAML) for a model spec."""
    where = resolve_weights(spec)
    if isinstance(where, str):
        return model_from_yaml(where), {}
    ckpt = load_pickled_model(where, trust)
    return model_from_checkpoint(ckpt), ckpt
