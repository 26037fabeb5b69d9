"""Device choice and moving batches there."""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

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


#: A model whose first forward pass on the probe input takes longer than this is not probed
#: (the probe would cost start-up time); it runs in :data:`DEFAULT_CPU_FORMAT`.
PROBE_BUDGET_S = 0.25
DEFAULT_CPU_FORMAT = torch.contiguous_format
_MARGIN = 0.95  # channels_last must be at least 5% faster to be chosen (noise on a shared machine)


def choose_memory_format(model: nn.Module, sample: torch.Tensor, repeats: int = 3) -> torch.memory_format:
    """The memory layout ``model`` runs ``sample`` (float (B, C, H, W) on the model's device) fastest
    in, with the model converted to it. The one rule, used by the predictor and the benchmarks.

    CUDA: channels_last (cuDNN's fp16 convolutions prefer NHWC). Other devices: a timed probe,
    NCHW vs channels_last (model and input both), one warm-up each then ``repeats`` alternating
    timed passes, minimum kept; channels_last must win by 5%. On 2 CPU cores channels_last is
    10-40% faster for YOLO and FCN and 1.5x slower for the small classifier, so no single rule
    fits. A model without convolution weights (ONNX) or slower than :data:`PROBE_BUDGET_S` a pass is
    not probed and stays in NCHW.
    """
    if sample.device.type == "cuda":
        return _convert(model, torch.channels_last)
    if sample.dim() != 4 or not any(p.dim() == 4 for p in model.parameters()):
        return DEFAULT_CPU_FORMAT  # no convolution weights (ONNX, a stub): layout does not matter
    formats = (torch.contiguous_format, torch.channels_last)
    inputs = {f: sample.contiguous(memory_format=f) for f in formats}
    best = {f: float("inf") for f in formats}
    # no_grad, not inference_mode: converting weights under inference_mode would make them
    # inference tensors, which a later training step cannot use.
    with torch.no_grad():
        for rep in range(repeats + 1):
            for f in formats:
                _convert(model, f)
                t0 = time.perf_counter()
                model(inputs[f])
                elapsed = time.perf_counter() - t0
                if rep == 0 and elapsed > PROBE_BUDGET_S:
                    return _convert(model, DEFAULT_CPU_FORMAT)
                if rep > 0:
                    best[f] = min(best[f], elapsed)
    fast = torch.channels_last if best[torch.channels_last] < _MARGIN * best[torch.contiguous_format] \
        else torch.contiguous_format
    return _convert(model, fast)


def _convert(model: nn.Module, memory_format: torch.memory_format) -> torch.memory_format:
    model.to(memory_format=memory_format)  # 4-d weights only; the others are left as they are
    return memory_format


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: live on a terminal, sparse in logs (CI, files),
    where every refresh would add a line."""
    return 0.1 if sys.stderr.isatty() else 30.0
