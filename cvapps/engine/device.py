"""Device choice and moving batches there."""

from __future__ import annotations

import sys

import torch
from torch import nn

from cvapps.errors import ConfigError, CvappsError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; explicit names (or devices) are checked."""
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
        # a misspelt name is a usage error (exit 2), as a bad config key is
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CvappsError(f"device {spec!r} requested but CUDA is not available here; use device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CvappsError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CvappsError("device 'mps' requested but MPS is not available here")
    return device


def images_to_device(images: torch.Tensor, device: torch.device,
                     memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float [0, 1] on ``device``; uint8 travels (4x fewer bytes), then converts.

    memory_format: the layout the model runs fastest in (:func:`choose_memory_format`); None keeps
    the old rule: channels_last on CUDA, the input's own strides elsewhere. The cast and the
    layout change are one copy. On CUDA the copy is non-blocking from pinned memory.
    """
    if device.type == "cuda":
        if not images.is_pinned():
            images = images.pin_memory()
        images = images.to(device, non_blocking=True)
        memory_format = memory_format or torch.channels_last
    else:
        images = images.to(device)
    if memory_format is None:
        return images.float().div_(255)
    return images.to(dtype=torch.float32, memory_format=memory_format).div_(255)


def choose_memory_format(model: nn.Module, device: torch.device, cpu_channels_last: bool) -> torch.memory_format:
    """The memory layout ``model`` runs in on ``device``, with the model converted to it. The one
    rule, used by the predictor and the benchmarks.

    CUDA: channels_last (cuDNN's fp16 convolutions prefer NHWC). CPU: the task's measured choice
    (``Task.cpu_channels_last``): on 2 CPU cores channels_last is 10-40% faster for the YOLO and FCN
    models and, with the packed convolutions of the inference form, 0-5% for the classifiers (1.5x
    slower with plain ``nn.Conv2d``); Faster R-CNN batches NCHW itself. A fixed rule and not a
    timed probe: the same image must give the same numbers in every run, however busy the machine.
    A model without convolution weights (ONNX) is left as it is and fed NCHW.
    """
    if not any(p.dim() == 4 for p in model.parameters()):
        return torch.contiguous_format
    if device.type == "cuda" or cpu_channels_last:
        return _convert(model, torch.channels_last)
    return _convert(model, torch.contiguous_format)


def _convert(model: nn.Module, memory_format: torch.memory_format) -> torch.memory_format:
    model.to(memory_format=memory_format)  # 4-d weights only; the others are left as they are
    return memory_format


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: live on a terminal, sparse in logs (CI, files),
    where every refresh would add a line."""
    return 0.1 if sys.stderr.isatty() else 30.0
