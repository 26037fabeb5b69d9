"""An exported ``model.onnx`` behind the task-model interface, so :class:`Predictor` runs it as is.

``OnnxModel(images)`` takes what a cvapps model takes in eval mode (float ``(B, C, S, S)`` in
[0, 1]) and returns the same raw outputs as torch tensors on the input's device; the task's
postprocess (softmax/top-k, mask mapping, NMS) then runs unchanged. onnxruntime picks CUDA when
the predictor's device is CUDA and onnxruntime-gpu is installed, else the CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvapps.errors import CheckpointError, CvappsError

ONNX_FORMAT = "cvapps-onnx-v1"
INPUT_NAME = "images"


def need_onnxruntime() -> Any:
    """The onnxruntime module, or a one-line error saying how to install it."""
    try:
        import onnxruntime  # optional heavy dependency: only for ONNX models
    except ImportError:
        raise CvappsError("running an ONNX model needs onnxruntime: pip install onnxruntime "
                          "(or onnxruntime-gpu)") from None
    return onnxruntime


class OnnxModel(nn.Module):
    """onnxruntime session with the ``model(images) -> outputs`` signature (eval only).

    ``meta`` holds the decoded cvapps metadata: task, class_names, category_ids, preprocessing.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        super().__init__()
        ort = need_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"model not found: {self.path}")
        wanted = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            wanted.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=wanted)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error classes
            raise CheckpointError(f"{self.path}: not a readable ONNX model: {onnx_failure(exc)}") from None
        self.meta: dict[str, Any] = _decode(self.session.get_modelmeta().custom_metadata_map, self.path)
        names = [i.name for i in self.session.get_inputs()]
        if names != [INPUT_NAME]:
            raise CheckpointError(f"{self.path}: expected one input {INPUT_NAME!r}, found {names}")
        self.output_names = [o.name for o in self.session.get_outputs()]

    def forward(self, images: torch.Tensor, targets: Any = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.training and targets is not None:
            raise RuntimeError("an ONNX model cannot be trained; train the .pt checkpoint")
        x = np.ascontiguousarray(images.detach().float().cpu().numpy())
        outs = [torch.from_numpy(o).to(images.device) for o in self.session.run(self.output_names, {INPUT_NAME: x})]
        return outs[0] if len(outs) == 1 else tuple(outs)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The cvapps metadata of an exported model, decoded (lists/dicts from JSON).

    Raises CheckpointError for a missing file, a file onnxruntime cannot read, or an ONNX model
    that cvapps did not export (no ``format`` marker).
    """
    ort = need_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model not found: {path}")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error classes
        raise CheckpointError(f"{path}: not a readable ONNX model: {onnx_failure(exc)}") from None
    return _decode(session.get_modelmeta().custom_metadata_map, path)


def onnx_failure(exc: BaseException) -> str:
    """What onnxruntime says went wrong, on one short line: its message without the error-code
    prefix, the file name it repeats and the C++ source location, then the error class
    (``Protobuf parsing failed (InvalidProtobuf)``, ``Unsupported model IR version: 999, ... (Fail)``)."""
    text = " ".join(str(exc).split())
    text = text.split(" failed:", 1)[1] if " failed:" in text else re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^\S+\.(cc|cpp|h):\d+ .*?\) (?=[A-Z])", "", text.strip())  # source file and C++ signature
    text = text if len(text) <= 160 else f"{text[:160]}..."
    return f"{text} ({type(exc).__name__})" if text else type(exc).__name__


def _decode(raw: dict[str, str], path: Path) -> dict[str, Any]:
    if raw.get("format") != ONNX_FORMAT:
        raise CheckpointError(f"{path}: not a cvapps ONNX export (no {ONNX_FORMAT!r} in its metadata); "
                              "export one with `cvapps export CKPT --format onnx`")
    try:
        meta: dict[str, Any] = dict(raw)
        for key in ("class_names", "category_ids", "preprocessing", "config"):
            meta[key] = json.loads(raw[key]) if key in raw else None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt cvapps metadata ({exc.msg})") from None
    if not meta.get("class_names") or not meta.get("preprocessing"):
        raise CheckpointError(f"{path}: cvapps metadata lacks class_names or preprocessing")
    return meta
