"""Reading native ultralytics model files without running code stored in them.

An ultralytics ``.pt`` is a pickled dict (``model``/``ema``: a ``DetectionModel`` object,
``train_args``, ``date``, ...). A full unpickle (what ``YOLO(path)`` does) runs any code the file
carries, and even torch's weights-only unpickler *calls* the classes it allows: calling an
ultralytics model class with a file's arguments builds layers from a yaml it ``eval``s. So cvapps
never calls anything a file names: the archive's sizes are checked (:mod:`cvapps.io.archive`), the
pickle is read inertly (:mod:`cvapps.tasks.ultralytics_unpickle`: tensors and plain data, class
names recorded), and the model is rebuilt from its checked yaml and loaded with its weights
(:mod:`cvapps.tasks.ultralytics_rebuild`). A file that holds anything else is refused unless the
user trusts it (``--trust-model`` or ``CVAPPS_TRUST_MODEL=1``: a full unpickle, the user's choice).
Whether a file is an ultralytics model is decided by reading it this way, never by looking for the
word "ultralytics" in its bytes.

A bare published name (``yolov8n.pt``) not on disk is fetched by ultralytics' downloader (the
:data:`download` hook) and then read the same safe way; offline or with ``CVAPPS_OFFLINE=1`` it is
a one-line error saying where to put the file. ultralytics itself is reached through
:mod:`cvapps.ultralytics_parts` (which checks its version).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvapps import ultralytics_parts
from cvapps.checkpoint import first_nonfinite
from cvapps.errors import CheckpointError
from cvapps.io.archive import NotATorchArchive, check_torch_archive
from cvapps.tasks.ultralytics_rebuild import rebuild_checkpoint
from cvapps.tasks.ultralytics_unpickle import UnsafeFile, read_inert

TRUST_ENV = "CVAPPS_TRUST_MODEL"
OFFLINE_ENV = "CVAPPS_OFFLINE"  # "1": never fetch a published weights name (no network attempt at all)
if os.environ.get(OFFLINE_ENV, "") == "1":
    # ultralytics checks connectivity (DNS) when first imported, which happens after this module is
    # imported; its own offline switch skips that check.
    os.environ.setdefault("YOLO_OFFLINE", "1")
# Names ultralytics publishes (and would download): yolov8n.pt, yolo11s-seg.pt, yolo26n.pt, rtdetr-l.pt ...
PUBLISHED = re.compile(r"^(yolo|rtdetr)[\w.-]*\.pt$", re.IGNORECASE)
YAML_SUFFIXES = (".yaml", ".yml")


def trusted(flag: bool = False) -> bool:
    """The user's ``--trust-model`` flag, or ``CVAPPS_TRUST_MODEL=1`` in the environment."""
    return bool(flag) or os.environ.get(TRUST_ENV, "") == "1"


def refusal(path: str | Path, why: str) -> CheckpointError:
    """The one message for a model file that would need a full (code-running) unpickle."""
    return CheckpointError(f"{path}: {why}; only a full unpickle (which runs code in the file) could load it: "
                           f"if you trust it, pass --trust-model (or set {TRUST_ENV}=1)")


def load_pickled_model(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """The checkpoint dict of an ultralytics ``.pt``, its ``model`` a float32 ultralytics model
    (the EMA one when the file has one): rebuilt without calling anything the file names, or fully
    unpickled when ``trust``. Raises CheckpointError (the refusal message, which names the trust
    switch, for a file outside what plain ultralytics files hold)."""
    path = Path(path)
    ultralytics_parts.check_version()  # first: the one-line error, never a refusal caused by a wrong ultralytics
    try:
        archive = check_torch_archive(path)  # sizes first, trusted or not: bounded memory either way
    except NotATorchArchive:
        raise CheckpointError(f"{path}: not a cvapps checkpoint or an ultralytics model file "
                              "(not a torch zip archive)") from None
    with archive:
        if not trusted(trust):
            try:
                root = read_inert(archive)
                ckpt, _ = rebuild_checkpoint(str(path), root)
            except UnsafeFile as exc:
                raise refusal(path, f"not a cvapps checkpoint nor a plain ultralytics model: {exc}") from None
            except CheckpointError:
                raise
            except Exception as exc:  # noqa: BLE001 - ultralytics failing on a yaml that passed the checks
                raise refusal(path, f"not a cvapps checkpoint, and its ultralytics model does not rebuild "
                                    f"from its yaml ({type(exc).__name__})") from None
            return ckpt
    try:
        # SECURITY: the user said they trust this file; a full unpickle runs its code.
        ckpt = _as_dict(path, torch.load(path, map_location="cpu", weights_only=False))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything a foreign pickle raises
        raise CheckpointError(f"{path}: cannot be read as a model file ({type(exc).__name__})") from None
    bad = first_nonfinite(_net(ckpt).state_dict())
    if bad is not None:
        raise CheckpointError(f"{path}: damaged model file: weight {bad} holds NaN or infinite values")
    ckpt["model"], ckpt["ema"] = _net(ckpt).float(), None
    return ckpt


def _as_dict(path: Path, obj: Any) -> dict[str, Any]:
    net = _net(obj) if isinstance(obj, dict) else None
    if not isinstance(net, nn.Module) or not hasattr(net, "names"):
        what = type(net if isinstance(obj, dict) else obj).__name__
        raise CheckpointError(f"{path}: not a cvapps checkpoint or an ultralytics model file (it holds a {what}, "
                              "not an ultralytics model)")
    return obj


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The float32 ultralytics model of a checkpoint dict from :func:`load_pickled_model`."""
    return _net(ckpt).float()


def _net(ckpt: dict[str, Any]) -> Any:
    return ckpt["ema"] if isinstance(ckpt.get("ema"), nn.Module) else ckpt.get("model")


def model_from_yaml(spec: str | Path) -> nn.Module:
    """A randomly initialised ultralytics model from a model YAML (a file or a built-in name)."""
    yolo = ultralytics_parts.YOLO
    try:
        return yolo(str(spec)).model  # a YAML builds layers; nothing is unpickled
    except Exception as exc:  # noqa: BLE001 - ultralytics raises many kinds for a bad YAML
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{spec}: cannot build an ultralytics model from it ({first})") from None


def weights_dir() -> Path | None:
    """ultralytics' weights folder from its settings (None when unreadable)."""
    try:
        return Path(ultralytics_parts.SETTINGS["weights_dir"])
    except Exception:  # noqa: BLE001 - settings unreadable: only the given path counts
        return None


def ultralytics_download(name: str, dest: Path) -> Path:
    """Fetch the published ultralytics file ``name`` (GitHub release assets) to ``dest`` with
    ultralytics' own downloader; returns the file's path."""
    return Path(ultralytics_parts.attempt_download_asset(dest))


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
        return bool(ultralytics_parts.ONLINE)  # loaded already by the native task
    except Exception:  # noqa: BLE001 - ultralytics unusable: offline, the message says where to put the file
        return False


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
