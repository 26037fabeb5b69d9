"""Checkpoints: plain dicts of tensors and builtins, written atomically, read with weights_only=True.

Layout (every key always present)::

    {"format": "cvapps-checkpoint-v1", "task": "classify", "config": {...},   # validated config
     "class_names": [...], "category_ids": [...] | None,                       # COCO ids, if any
     "preprocessing": {"imgsz": 224, "resize": "stretch", "in_channels": 3},
     "model": state_dict, "epoch": 3, "metrics": {...},
     "train_state": {"optimizer": ..., "scheduler": ..., "scaler": ..., "best": 0.97} | None}
"""

from __future__ import annotations

import pickletools
from pathlib import Path
from typing import Any

import torch

from cvapps.errors import CheckpointError
from cvapps.io.archive import NotATorchArchive, check_torch_archive
from cvapps.io.safe_write import write_with

FORMAT = "cvapps-checkpoint-v1"


class ForeignCheckpoint(CheckpointError):
    """The file exists but is not a cvapps checkpoint (e.g. a native ultralytics model)."""


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then move the file into place, so readers never see half a file.

    The one write primitive (:func:`cvapps.io.safe_write.write_with`): a fresh temp file made inside
    the output folder through no symbolic link, renamed over ``path`` (a link planted there is
    replaced, never written through); never an input of the running command. The file gets the
    mode the umask gives (0644 under umask 022). Any OSError (disk full, a file-size limit, no
    permission) becomes a one-line OutputError naming ``path``; the previous file, if any, is left
    as it was and the temporary file is removed.
    """
    write_with(path, write)


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
    """Read a cvapps checkpoint safely (``weights_only=True``); ``task`` checks what it is for.

    Before torch reads anything, the archive's declared sizes are checked
    (:func:`cvapps.io.archive.check_torch_archive`) and its pickle may name only plain containers
    and torch's tensor rebuilding (:data:`PICKLE_GLOBALS`); after, every tensor must fit its
    storage and the weights must be a dict of finite tensors. ForeignCheckpoint: not a cvapps
    checkpoint (e.g. an ultralytics file); CheckpointError: a cvapps checkpoint that is damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with check_torch_archive(path) as archive:
            _check_pickle_globals(path, archive.read("data.pkl"))
    except NotATorchArchive:
        raise ForeignCheckpoint(f"{path}: not a cvapps checkpoint (not a torch zip archive)") from None
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
    _check_tensors(path, ckpt)
    wanted = (task,) if isinstance(task, str) else task
    if wanted and ckpt["task"] not in wanted:
        raise CheckpointError(f"{path} is a {ckpt['task']!r} checkpoint; this command needs {' or '.join(map(repr, wanted))}")
    return ckpt


#: The globals a cvapps checkpoint's pickle may name (``module name``, as the GLOBAL opcode spells
#: them). torch's weights-only unpickler would also call e.g. ``bytearray(n)`` (n bytes of memory
#: from a few bytes of pickle) and whatever another library added to its allowlist process-wide.
PICKLE_GLOBALS = frozenset(
    {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_parameter",
     "builtins set", "__builtin__ set", "_codecs encode", "torch Size", "torch device"}
    | {f"torch {kind}Storage" for kind in ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char",
                                             "Byte", "Bool")}
    | {f"torch {dtype}" for dtype in ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16",
                                      "int8", "uint8", "bool")})


def _check_pickle_globals(path: Path, data: bytes) -> None:
    """ForeignCheckpoint unless every global the pickle names is in :data:`PICKLE_GLOBALS`
    (read from the opcodes; nothing is unpickled)."""
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL" and arg not in PICKLE_GLOBALS:
                raise ForeignCheckpoint(f"{path}: not a cvapps checkpoint (cannot be read with weights_only=True: "
                                        f"its pickle names {str(arg).replace(' ', '.')[:100]})")
            if op.name in ("STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"):
                raise ForeignCheckpoint(f"{path}: not a cvapps checkpoint (cannot be read with weights_only=True: "
                                        f"its pickle uses {op.name})")
    except ForeignCheckpoint:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed opcode stream
        raise ForeignCheckpoint(f"{path}: not a cvapps checkpoint (cannot be read with weights_only=True: "
                                f"{type(exc).__name__})") from None


MAX_VALUES = 10_000_000  # values a checkpoint's data may expand to (shared references counted each time)


def _expanded(path: Path, obj: Any, depth: int, memo: dict[int, int]) -> int:
    """How many values ``obj`` expands to, each shared object counted once per reference (memoised:
    linear in the objects); checks every tensor against its storage on the way."""
    if depth > 64:
        raise CheckpointError(f"{path}: damaged cvapps checkpoint: its data nests too deeply")
    if id(obj) in memo:
        return memo[id(obj)]
    n = 1
    if isinstance(obj, torch.Tensor):
        if obj.numel() * obj.element_size() > obj.untyped_storage().nbytes():
            raise CheckpointError(f"{path}: damaged cvapps checkpoint: a tensor of shape {tuple(obj.shape)[:8]} "
                                  "is larger than its storage")
    elif isinstance(obj, dict):
        n += sum(_expanded(path, k, depth + 1, memo) + _expanded(path, v, depth + 1, memo) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        n += sum(_expanded(path, v, depth + 1, memo) for v in obj)
    memo[id(obj)] = n = min(n, MAX_VALUES + 1)
    return n


def first_nonfinite(state: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor of ``state`` holding NaN or inf; None if none."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() \
                and not bool(torch.isfinite(value).all()):
            return str(name)
    return None


def _check_tensors(path: Path, ckpt: dict[str, Any]) -> None:
    """The plain keys have their types, the weights are a dict of finite tensors, no tensor anywhere
    is bigger than its storage (a zero-stride view over one element would make every later operation
    allocate its full size), and the data does not expand past :data:`MAX_VALUES` values (a pickle can
    reference one list a thousand times at each level: a few kB that JSON or a printout would expand)."""
    kinds = {"task": str, "config": dict, "class_names": (list, tuple), "preprocessing": dict}
    for key, kind in kinds.items():
        if not isinstance(ckpt[key], kind) or (key == "class_names" and not all(isinstance(n, str) for n in ckpt[key])):
            raise CheckpointError(f"{path}: damaged cvapps checkpoint: its {key} is a {type(ckpt[key]).__name__}")
    state = ckpt["model"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        kind = type(state).__name__ if not isinstance(state, dict) else "dict holding non-tensors"
        raise CheckpointError(f"{path}: damaged cvapps checkpoint: its model weights are a {kind}, not a state dict")
    if _expanded(path, ckpt, 0, {}) > MAX_VALUES:
        raise CheckpointError(f"{path}: damaged cvapps checkpoint: its data expands to over {MAX_VALUES} values")
    bad = first_nonfinite(state)
    if bad is not None:
        raise CheckpointError(f"{path}: damaged cvapps checkpoint: weight {bad} holds NaN or infinite values")
