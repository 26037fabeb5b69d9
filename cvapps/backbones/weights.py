"""Loading torchvision-format state-dict files, with errors that name the file and the keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cvapps.errors import CheckpointError
from cvapps.io.archive import NotATorchArchive, check_torch_archive


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt`` file; also unwraps ``{"model"|"state_dict": {...}}``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        check_torch_archive(path).close()  # declared sizes first: a zip bomb fails here, not in torch.load
    except NotATorchArchive:
        pass  # a legacy (pre-zip) torch file is not compressed: its size on disk bounds what it holds
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


@dataclass
class LoadReport:
    """What :func:`load_state` did: tensors loaded, re-initialised (shape differs) and missing."""

    loaded: int
    reinit: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str, *,
               ignore_prefixes: tuple[str, ...] = (), reinit_prefixes: tuple[str, ...] = (),
               strict: bool = True, what: str = "this model") -> LoadReport:
    """The one partial state-dict loader: ``state`` into ``module``.

    ignore_prefixes: keys under these are left out on both sides (e.g. a classifier's ``fc.``).
    reinit_prefixes: keys under these whose shape differs keep their fresh initialisation
    (``("",)``: any key), reported in the result. strict: a missing or unexpected key is an error;
    otherwise missing keys keep their initialisation and unexpected ones are ignored. Any other
    shape mismatch is always an error. Errors are one-line CheckpointErrors naming ``source`` and
    the first few keys. ``num_batches_tracked`` counters never count as missing or unexpected.
    """
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore_prefixes)}
    counter = "num_batches_tracked"
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    reinit = [k for k in mismatched if reinit_prefixes and k.startswith(reinit_prefixes)]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched if k not in reinit]
    missing = [k for k in own if k not in state and not k.endswith(counter)]
    unexpected = [k for k in state if k not in own and not k.endswith(counter)]
    problems = [("shape mismatch", shape)] + ([("missing", missing), ("unexpected", unexpected)] if strict else [])
    parts = [f"{name} {keys[:3]}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
             for name, keys in problems if keys]
    if parts:
        raise CheckpointError(f"{source} does not fit {what}: " + "; ".join(parts))
    fits = {k: v for k, v in state.items() if k in own and k not in mismatched}
    # strict=False: counters and deliberately re-initialised keys are absent on purpose (checked above).
    module.load_state_dict(fits, strict=False)
    return LoadReport(len(fits), reinit, missing)
