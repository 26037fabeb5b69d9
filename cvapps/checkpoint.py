"""Checkpoints: plain dicts of tensors and builtins, written atomically, read with weights_only=True.

Layout (every key always present)::

    {"format": "cvapps-checkpoint-v1", "task": "classify", "config": {...},   # validated config
     "class_names": [...], "category_ids": [...] | None,                       # COCO ids, if any
     "preprocessing": {"imgsz": 224, "resize": "stretch", "in_channels": 3},
     "model": state_dict, "epoch": 3, "metrics": {...},
     "train_state": {"optimizer": ..., "scheduler": ..., "scaler": ..., "best": 0.97} | None}
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import torch

from cvapps.errors import CheckpointError, OutputError
from cvapps.io.guard import check_writable_target

FORMAT = "cvapps-checkpoint-v1"


class ForeignCheckpoint(CheckpointError):
    """The file exists but is not a cvapps checkpoint (e.g. a native ultralytics model)."""


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then move the file into place, so readers never see half a file.

    The file gets the mode the umask gives (0644 under umask 022), like any new file. A path that is
    an input of the running command is refused (:mod:`cvapps.io.guard`). Any OSError (disk full, a
    file-size limit, no permission) becomes a one-line OutputError naming ``path``; the previous
    file, if any, is left as it was and the temporary file is removed.
    """
    path = Path(path)
    check_writable_target(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp(path)
        write(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"could not write {path}: {exc.strerror or exc}") from None
        raise


def _new_temp(path: Path) -> Path:
    """An empty hidden file next to ``path``, created with mode 0o666 so the umask sets its
    permissions (``tempfile.mkstemp`` would make it 0600, and the final file with it)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    missing = {"task", "config", "class_names", "preprocessing", "model"} - set(ckpt)
    if missing:
        raise ValueError(f"checkpoint lacks {sorted(missing)}")
    full = {"format": FORMAT, "category_ids": None, "epoch": 0, "metrics": {}, "train_state": None, **ckpt}
    atomic_write(path, lambda tmp: _torch_save(full, tmp))


class _WriteErrors:
    """File wrapper that keeps the OSError of a failed write: torch.save reports a full disk or a
    file-size limit as an opaque RuntimeError ("unexpected pos ..."), this gets the real reason."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _torch_save(obj: Any, tmp: str) -> None:
    with open(tmp, "wb") as fh:
        out = _WriteErrors(fh)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise


def load_checkpoint(path: str | Path, task: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read a cvapps checkpoint safely (``weights_only=True``); ``task`` checks what it is for."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign pickles
        raise ForeignCheckpoint(
            f"{path}: not a cvapps checkpoint (cannot be read with weights_only=True: {type(exc).__name__}); "
            "native ultralytics models load through cvapps.engine.load.load_model"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ForeignCheckpoint(f"{path}: not a cvapps checkpoint (no {FORMAT!r} marker)")
    missing = {"task", "config", "class_names", "preprocessing", "model"} - set(ckpt)
    if missing:
        raise CheckpointError(f"{path}: damaged cvapps checkpoint: no {', '.join(sorted(missing))}")
    wanted = (task,) if isinstance(task, str) else task
    if wanted and ckpt["task"] not in wanted:
        raise CheckpointError(f"{path} is a {ckpt['task']!r} checkpoint; this command needs {' or '.join(map(repr, wanted))}")
    return ckpt


def is_cvapps_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a readable cvapps checkpoint (any task)."""
    try:
        load_checkpoint(path)
        return True
    except CheckpointError:
        return False
