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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from cvapps.checkpoint import atomic_write
from cvapps.engine.load import load_model
from cvapps.engine.onnx_graph import PARITY_RTOL, GraphSpec, graph_metadata, trace_onnx
from cvapps.engine.onnx_graph import check_parity as check_graph_parity
from cvapps.engine.onnx_model import (
    INPUT_NAME,
    ONNX_FORMAT,
    need_onnxruntime,
    read_onnx_metadata,
)
from cvapps.errors import CvappsError
from cvapps.tasks.base import Task
from cvapps.tasks.registry import exportable_tasks

__all__ = ["ONNX_FORMAT", "PARITY_RTOL", "ExportReport", "check_parity", "export_onnx", "read_onnx_metadata"]


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


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, *, opset: int = 17,
                dynamic_batch: bool = True, check: bool = True) -> ExportReport:
    """Export ``checkpoint`` to ONNX at ``out`` (default: next to it, ``.onnx``) and check it.

    Returns the report of the onnxruntime parity check; raises :class:`CvappsError` for a task
    that cannot be exported, a missing onnx/onnxruntime, or a parity failure (no file is left).
    """
    onnx, _ = _need_onnx()
    checkpoint = Path(checkpoint)
    loaded = load_model(checkpoint)
    if loaded.runtime != "torch":
        raise CvappsError(f"export: {checkpoint} is already an exported model; export the .pt checkpoint")
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
    pre = ckpt["preprocessing"]
    spec = GraphSpec(int(pre["imgsz"]), int(pre.get("in_channels", 3)), opset, dynamic_batch)
    graph, outputs = trace_onnx(model, task, spec)
    proto = onnx.load_from_string(graph)
    meta = {"format": ONNX_FORMAT, **graph_metadata(task, ckpt, spec, checkpoint.name, outputs)}
    del proto.metadata_props[:]
    for key, value in meta.items():  # ONNX metadata is strings only: lists/dicts as JSON
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    proto.doc_string = f"cvapps {task.name} model exported from {checkpoint.name}"
    onnx.checker.check_model(proto)
    atomic_write(out, lambda tmp: onnx.save(proto, tmp))

    report = ExportReport(out, task.name, opset, 0.0, task.onnx.parity_atol, ())
    if check:
        try:
            report = check_parity(out, model, task, spec.channels, spec.size,
                                  batches=(1, 3) if dynamic_batch else (2,))
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
    atol = task.onnx.parity_atol

    def run(x: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {INPUT_NAME: x})

    worst = check_graph_parity(run, model, GraphSpec(size, channels), atol, "onnxruntime", batches)
    return ExportReport(Path(onnx_path), task.name, 0, worst, atol, tuple(batches))
