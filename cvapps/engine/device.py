"""Device choice and moving batches there."""

from __future__ import annotations

import sys

import torch

from cvapps.errors import CvappsError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; explicit names are checked."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise CvappsError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CvappsError(f"device {spec!r} requested but CUDA is not available here; use device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CvappsError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CvappsError("device 'mps' requested but MPS is not available here")
    return device


def images_to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float [0, 1] on ``device``; uint8 travels (4x fewer bytes), then converts.

    On CUDA the copy is non-blocking from pinned memory and the result is channels_last, which
    cuDNN convolutions prefer under autocast.
    """
    if device.type == "cuda":
        if not images.is_pinned():
            images = images.pin_memory()
        x = images.to(device, non_blocking=True).float().div_(255)
        return x.contiguous(memory_format=torch.channels_last)
    return images.to(device).float().div_(255)


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: live on a terminal, sparse in logs (CI, files),
    where every refresh would add a line."""
    return 0.1 if sys.stderr.isatty() else 30.0
