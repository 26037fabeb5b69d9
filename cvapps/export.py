"""``cvapps export CKPT --format onnx``: a cvapps checkpoint -> an ONNX model with dynamic batch.

The exported graph is the task model's eval forward, so it takes what every cvapps model takes
and returns its raw predictions (postprocessing stays in Python, shared with the PyTorch path):

* input ``images``: float32 ``(B, C, S, S)`` RGB (or gray) in [0, 1], already resized/letterboxed
  to ``S = preprocessing.imgsz`` (normalisation is inside the graph);
* output, by task: ``classify`` logits ``(B, K)``; ``segment`` logits ``(B, K, S, S)``; ``yolo``
  ``(B, 4 + K, A)`` = xywh (centre, size, input pixels) + per-class sigmoid scores before NMS;
  ``multitask``: one named output per head of the one graph (``detect`` as yolo's, ``segment``
  ``(B, 1 + K, S, S)``, ``classify`` presence logits ``(B, K)``), all from one backbone pass.

Our metadata goes into the model's ``metadata_props`` (all strings; lists/dicts as JSON): ``format``
(``cvapps-onnx-v1``), ``task``, ``class_names``, ``category_ids``, ``preprocessing`` ({"imgsz",
"resize", "in_channels"}), ``input``, ``outputs``, ``config``, ``epoch``, ``source``, ``parity_atol``.
``cvapps classify|segment|detect --model model.onnx`` reads them back (see
:mod:`cvapps.engine.onnx_model`).

What a task exports (its outputs, its parity tolerance) it declares itself: ``Task.onnx`` (a task
without one is refused, with its ``onnx_refusal`` when it says why). Each export is checked:
onnxruntime runs the file at two batch sizes other than the traced one and its outputs must match
PyTorch's within the task's ``onnx.parity_atol`` (absolute) + 1e-3 relative; otherwise the file is
removed and the export fails.

Faster R-CNN is not exported: torchvision's export path traces one fixed image count (its
transform and RoI heads loop over the images of the list). Tried with torchvision 0.29: it exports
at batch 1 and runs in onnxruntime, but batch 2 is rejected, so it cannot give the dynamic batch
this command promises; it says so instead of writing a model that breaks at another batch size.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvapps.checkpoint import atomic_write
from cvapps.engine.load import load_model
from cvapps.engine.onnx_model import INPUT_NAME, ONNX_FORMAT, need_onnxruntime, read_onnx_metadata
from cvapps.errors import CvappsError
from cvapps.heads.yolo import head_of
from cvapps.tasks.base import Task
from cvapps.tasks.registry import exportable_tasks

__all__ = ["ONNX_FORMAT", "PARITY_RTOL", "ExportReport", "check_parity", "export_onnx", "read_onnx_metadata"]

PARITY_RTOL = 1e-3  # relative part of the parity check (the absolute part is the task's onnx.parity_atol)


@dataclass
class ExportReport:
    path: Path
    task: str
    opset: int
    max_abs_diff: float
    atol: float
    batches_checked: tuple[int, ...]

    def summary(self) -> str:
        return (f"exported {self.task} model to {self.path} (opset {self.opset}, dynamic batch); onnxruntime "
                f"matches PyTorch at batch {', '.join(map(str, self.batches_checked))}: max |diff| "
                f"{self.max_abs_diff:.2e} <= atol {self.atol:g} + rtol {PARITY_RTOL:g}")


def _need_onnx() -> tuple[Any, Any]:
    try:
        import onnx  # optional heavy dependency: only `cvapps export` needs it
    except ImportError:
        raise CvappsError("ONNX export needs the onnx and onnxruntime packages: pip install 'cvapps[export]'") from None
    return onnx, need_onnxruntime()


class _EvalForward(nn.Module):
    """Exports ``model(images)`` in eval mode and nothing else (no targets argument in the graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.model(images)
        if isinstance(out, dict):  # multitask: one output per head, in the model's head order
            return tuple(out.values())
        return out[0] if isinstance(out, (tuple, list)) else out


def _prepare_yolo_head(model: nn.Module) -> None:
    # ultralytics' own exporter sets these: `export` makes Detect return the decoded tensor only,
    # and anchors/strides are then computed for the traced (fixed) input size. (No Detect head: nothing.)
    head = head_of(model)
    if head is not None:
        head.export, head.format, head.dynamic = True, "onnx", False


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, *, opset: int = 17,
                dynamic_batch: bool = True, check: bool = True) -> ExportReport:
    """Export ``checkpoint`` to ONNX at ``out`` (default: next to it, ``.onnx``) and check it.

    Returns the report of the onnxruntime parity check; raises :class:`CvappsError` for a task
    that cannot be exported, a missing onnx/onnxruntime, or a parity failure (no file is left).
    """
    onnx, ort = _need_onnx()
    checkpoint = Path(checkpoint)
    loaded = load_model(checkpoint)
    ckpt = {**loaded.info, "config": loaded.raw_config}
    task = loaded.task
    if task.onnx is None:
        raise CvappsError(task.onnx_refusal or f"export: task {task.name!r} cannot be exported to ONNX "
                                               f"(exportable: {', '.join(exportable_tasks())})")
    if not 11 <= opset <= 20:
        raise CvappsError(f"export: --opset {opset} is outside the supported range 11..20")
    out = Path(out) if out else checkpoint.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise CvappsError(f"export: the output file must end in .onnx, got {out}")

    model = loaded.model.eval()
    _prepare_yolo_head(model)
    pre = ckpt["preprocessing"]
    size, channels = int(pre["imgsz"]), int(pre.get("in_channels", 3))
    wrapper = _EvalForward(model).eval()
    outputs = task.onnx_outputs(model)
    out_names = [name for name, _ in outputs]
    example = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: the torch.export one needs onnxscript, which is not a dependency.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=out_names, do_constant_folding=True,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *out_names]} if dynamic_batch else None,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    meta = {
        "format": ONNX_FORMAT,
        "task": task.name,
        "class_names": json.dumps(list(ckpt["class_names"])),
        "category_ids": json.dumps(ckpt.get("category_ids")),
        "preprocessing": json.dumps({"imgsz": size, "resize": pre.get("resize"), "in_channels": channels}),
        "input": f"{INPUT_NAME}: float32 (B, {channels}, {size}, {size}) RGB in [0, 1], resized with "
                 f"{pre.get('resize')!r} to {size}; normalisation is inside the graph",
        "outputs": "; ".join(f"{name}: {doc}" for name, doc in outputs),
        "config": json.dumps(ckpt["config"]),
        "epoch": str(ckpt.get("epoch", 0)),
        "source": checkpoint.name,
        "parity_atol": str(task.onnx.parity_atol),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"cvapps {task.name} model exported from {checkpoint.name}"
    onnx.checker.check_model(proto)
    atomic_write(out, lambda tmp: onnx.save(proto, tmp))

    report = ExportReport(out, task.name, opset, 0.0, task.onnx.parity_atol, ())
    if check:
        try:
            report = check_parity(out, model, task, channels, size, batches=(1, 3) if dynamic_batch else (2,))
            report.opset = opset
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    return report


def check_parity(onnx_path: str | Path, model: nn.Module, task: Task, channels: int, size: int,
                 batches: tuple[int, ...] = (1, 3)) -> ExportReport:
    """Run ``onnx_path`` in onnxruntime and ``model`` (of ``task``, an exportable one) in PyTorch on the
    same random batches.

    Raises CvappsError if any output differs by more than ``task.onnx.parity_atol + PARITY_RTOL * |ref|``.
    """
    _, ort = _need_onnx()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    atol, worst = task.onnx.parity_atol, 0.0
    gen = torch.Generator().manual_seed(1)
    for b in batches:
        x = torch.rand(b, channels, size, size, generator=gen)
        with torch.no_grad():
            refs = _EvalForward(model.eval())(x)
        refs = [r.float().numpy() for r in (refs if isinstance(refs, tuple) else (refs,))]
        gots = session.run(None, {INPUT_NAME: x.numpy()})
        if len(gots) != len(refs):
            raise CvappsError(f"export check failed: onnxruntime gives {len(gots)} outputs, PyTorch {len(refs)}")
        for got, ref, meta in zip(gots, refs, session.get_outputs()):
            if got.shape != ref.shape:
                raise CvappsError(f"export check failed: onnxruntime output {meta.name} {got.shape} != PyTorch "
                                  f"{ref.shape} at batch {b}")
            diff = np.abs(got - ref)
            worst = max(worst, float(diff.max(initial=0.0)))
            if not np.all(diff <= atol + PARITY_RTOL * np.abs(ref)):
                raise CvappsError(f"export check failed: onnxruntime output {meta.name} differs from PyTorch by up "
                                  f"to {diff.max():.3g} at batch {b} (tolerance {atol:g} + {PARITY_RTOL:g} x |value|)")
    return ExportReport(Path(onnx_path), task.name, 0, worst, atol, tuple(batches))
