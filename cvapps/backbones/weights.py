"""Loading torchvision-format state-dict files, with errors that name the file and the keys."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cvapps.errors import CheckpointError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt`` file; also unwraps ``{"model"|"state_dict": {...}}``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign pickles
        raise CheckpointError(f"{path}: not a weights file loadable with weights_only=True ({type(exc).__name__})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return obj


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                  ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` strictly, except keys under ``ignore_prefixes``.

    Raises CheckpointError naming ``source`` and the first few missing, unexpected or
    wrong-shaped keys, so the user sees at once which file does not fit which model.
    """
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if shape:
            parts.append(f"shape mismatch {shape[:3]}")
        raise CheckpointError(f"{source} does not fit this model: " + "; ".join(parts))
    module.load_state_dict(state, strict=False)
