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
import tempfile
from pathlib import Path
from typing import Any

import torch

from cvapps.errors import CheckpointError

FORMAT = "cvapps-checkpoint-v1"


class ForeignCheckpoint(CheckpointError):
    """The file exists but is not a cvapps checkpoint (e.g. a native ultralytics model)."""


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then move the file into place, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    missing = {"task", "config", "class_names", "preprocessing", "model"} - set(ckpt)
    if missing:
        raise ValueError(f"checkpoint lacks {sorted(missing)}")
    full = {"format": FORMAT, "category_ids": None, "epoch": 0, "metrics": {}, "train_state": None, **ckpt}
    atomic_write(path, lambda tmp: torch.save(full, tmp))


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
