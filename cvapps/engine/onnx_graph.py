"""The exported graph of a cvapps model, shared by every export format (ONNX file, OpenVINO folder).

Both formats start from the same TorchScript-traced ONNX graph of the task model's eval forward
(input ``images`` float32 ``(B, C, S, S)`` in [0, 1], dynamic batch; outputs as the task declares:
``Task.onnx``), carry the same cvapps metadata (task, class names, category ids, preprocessing,
config) and are checked the same way against PyTorch on random batches. This module imports no
loader, so the runtime selection in :mod:`cvapps.engine.load` can convert a checkpoint it loaded.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cvapps.errors import CvappsError
from cvapps.heads.yolo import head_of
from cvapps.tasks.base import Task

INPUT_NAME = "images"
PARITY_RTOL = 1e-3  # relative part of every parity check (the absolute part is the task's onnx.parity_atol)


class EvalForward(nn.Module):
    """Exports ``model(images)`` in eval mode and nothing else (no targets argument in the graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.model(images)
        if isinstance(out, dict):  # multitask: one output per head, in the model's head order
            return tuple(out.values())
        return out[0] if isinstance(out, (tuple, list)) else out


def prepare_yolo_head(model: nn.Module) -> None:
    # ultralytics' own exporter sets these: `export` makes Detect return the decoded tensor only,
    # and anchors/strides are then computed for the traced (fixed) input size. (No Detect head: nothing.)
    head = head_of(model)
    if head is not None:
        head.export, head.format, head.dynamic = True, "onnx", False


@dataclass(frozen=True)
class GraphSpec:
    """What to trace: the model's input size and channels, the ONNX opset, a dynamic batch axis."""

    size: int
    channels: int = 3
    opset: int = 17
    dynamic_batch: bool = True


def trace_onnx(model: nn.Module, task: Task, spec: GraphSpec) -> tuple[bytes, list[tuple[str, str]]]:
    """The serialized ONNX graph of ``model`` (a loaded model of ``task``, put in eval mode) and its
    outputs' (name, description). Raises CvappsError for a task that declares no export."""
    if task.onnx is None:
        raise CvappsError(task.onnx_refusal or f"export: task {task.name!r} cannot be exported")
    model.eval()
    prepare_yolo_head(model)
    outputs = task.onnx_outputs(model)
    out_names = [name for name, _ in outputs]
    example = torch.rand(2, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: the torch.export one needs onnxscript, which is not a dependency.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            EvalForward(model).eval(), (example,), buffer, dynamo=False, opset_version=spec.opset,
            input_names=[INPUT_NAME], output_names=out_names, do_constant_folding=True,
            dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *out_names]} if spec.dynamic_batch else None,
        )
    return buffer.getvalue(), outputs


def graph_metadata(task: Task, info: dict[str, Any], spec: GraphSpec, source: str,
                   outputs: list[tuple[str, str]]) -> dict[str, Any]:
    """The cvapps metadata every export carries (decoded values; ONNX stores them as strings).

    info: the checkpoint's keys (class_names, category_ids, preprocessing, config, epoch);
    outputs: (name, description) of each graph output, as :func:`trace_onnx` gives them."""
    pre = info["preprocessing"]
    return {
        "task": task.name,
        "class_names": list(info["class_names"]),
        "category_ids": info.get("category_ids"),
        "preprocessing": {"imgsz": spec.size, "resize": pre.get("resize"), "in_channels": spec.channels},
        "input": f"{INPUT_NAME}: float32 (B, {spec.channels}, {spec.size}, {spec.size}) RGB in [0, 1], resized "
                 f"with {pre.get('resize')!r} to {spec.size}; normalisation is inside the graph",
        "outputs": "; ".join(f"{name}: {doc}" for name, doc in outputs),
        "config": info.get("config"),
        "epoch": int(info.get("epoch", 0) or 0),
        "source": source,
        "parity_atol": float(task.onnx.parity_atol) if task.onnx else 0.0,
    }


def check_parity(run: Callable[[np.ndarray], Sequence[np.ndarray]], model: nn.Module, spec: GraphSpec,
                 atol: float, engine: str, batches: tuple[int, ...] = (1, 3)) -> float:
    """Run ``run`` (an exported model: NCHW float32 array -> its outputs) and ``model`` (PyTorch) on
    the same random batches; the largest absolute difference. Raises CvappsError naming ``engine``
    when an output's shape differs or a value differs by more than ``atol + PARITY_RTOL * |ref|``."""
    worst = 0.0
    for b, x, refs in _reference_batches(model, spec, batches):
        gots = list(run(x.numpy()))
        if len(gots) != len(refs):
            raise CvappsError(f"export check failed: {engine} gives {len(gots)} outputs, PyTorch {len(refs)}")
        for i, (got, ref) in enumerate(zip(gots, refs)):
            if got.shape != ref.shape:
                raise CvappsError(f"export check failed: {engine} output {i} {got.shape} != PyTorch {ref.shape} "
                                  f"at batch {b}")
            diff = np.abs(got - ref)
            worst = max(worst, float(diff.max(initial=0.0)))
            if not np.all(diff <= atol + PARITY_RTOL * np.abs(ref)):
                raise CvappsError(f"export check failed: {engine} output {i} differs from PyTorch by up to "
                                  f"{diff.max():.3g} at batch {b} (tolerance {atol:g} + {PARITY_RTOL:g} x |value|)")
    return worst


def _reference_batches(model: nn.Module, spec: GraphSpec, batches: tuple[int, ...]
                       ) -> Iterator[tuple[int, torch.Tensor, list[np.ndarray]]]:
    gen = torch.Generator().manual_seed(1)
    for b in batches:
        x = torch.rand(b, spec.channels, spec.size, spec.size, generator=gen)
        with torch.no_grad():
            refs = EvalForward(model.eval())(x)
        yield b, x, [r.float().numpy() for r in (refs if isinstance(refs, tuple) else (refs,))]
