"""OpenVINO models: a cvapps model folder behind the task-model interface, and the conversion to it.

A cvapps OpenVINO model is a folder::

    model.xml / model.bin   the OpenVINO IR of the exported graph (:mod:`cvapps.engine.onnx_graph`)
    metadata.json           {"format": "cvapps-openvino-v1", "task", "class_names", "category_ids",
                             "preprocessing", "config", "precision": "fp32" | "int8", "source_sha256", ...}

``OpenVinoModel(images)`` takes what a cvapps model takes in eval mode (float ``(B, C, S, S)`` in
[0, 1]) and returns the same raw outputs as torch tensors, so the task's postprocess runs
unchanged, exactly as :class:`~cvapps.engine.onnx_model.OnnxModel` does for an ``.onnx`` file (which
OpenVINO also runs: ``--runtime openvino --model model.onnx``).

Precision: OpenVINO's CPU plugin runs in bf16 by default on CPUs that have it; cvapps compiles with
``INFERENCE_PRECISION_HINT=f32`` so fp32 folders match PyTorch within the task's export tolerance
(INT8 folders run their quantized layers in int8 and the rest in f32). OpenVINO runs on the CPU here
(``--runtime auto`` picks it only for the CPU).
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvapps.checkpoint import atomic_write_text
from cvapps.engine.onnx_graph import GraphSpec, check_parity, graph_metadata, trace_onnx
from cvapps.engine.onnx_model import INPUT_NAME, read_onnx_metadata
from cvapps.errors import CheckpointError, CvappsError
from cvapps.tasks.base import Task

OPENVINO_FORMAT = "cvapps-openvino-v1"
XML, BIN, META = "model.xml", "model.bin", "metadata.json"
INSTALL_HINT = 'pip install "cvapps[openvino]"'
# f32: parity with PyTorch (the CPU plugin's default may be bf16); LATENCY: one request, all cores.
COMPILE_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


def need_openvino() -> Any:
    """The openvino module, or a one-line error naming the extra that installs it."""
    try:
        import openvino  # optional heavy dependency: only for the OpenVINO runtime
    except ImportError:
        raise CvappsError(f"the OpenVINO runtime needs the openvino extra: {INSTALL_HINT}") from None
    return openvino


def is_openvino_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding a cvapps OpenVINO model (its metadata.json and model.xml)."""
    path = Path(path)
    return path.is_dir() and (path / META).is_file() and (path / XML).is_file()


def read_openvino_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded metadata.json of a cvapps OpenVINO folder; a one-line CheckpointError otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model not found: {folder}")
    if not is_openvino_folder(folder):
        raise CheckpointError(f"{folder}: not a cvapps OpenVINO model folder (no {META} and {XML}); export one "
                              "with `cvapps export CKPT --format openvino`")
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / META}: unreadable cvapps metadata ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != OPENVINO_FORMAT:
        raise CheckpointError(f"{folder / META}: not cvapps OpenVINO metadata (no {OPENVINO_FORMAT!r} format)")
    if not meta.get("class_names") or not isinstance(meta.get("preprocessing"), dict):
        raise CheckpointError(f"{folder / META}: cvapps metadata lacks class_names or preprocessing")
    return meta


class OpenVinoModel(nn.Module):
    """An OpenVINO compiled model with the ``model(images) -> outputs`` signature (eval only).

    path: a cvapps OpenVINO folder, or a ``cvapps export`` ONNX file (converted in memory).
    ``meta`` holds the decoded cvapps metadata: task, class_names, category_ids, preprocessing.
    """

    def __init__(self, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> None:
        super().__init__()
        ov = need_openvino()
        # OpenVINO runs on the CPU whatever ``device`` is (a model loaded with device "auto" on a CUDA
        # machine still runs): inputs are copied to the host and outputs back to the input's device.
        self.device_hint = torch.device(device)
        self.path = Path(path)
        if self.path.suffix.lower() == ".onnx":
            self.meta = {**read_onnx_metadata(self.path), "precision": "fp32"}
            source: Any = str(self.path)
        else:
            self.meta = read_openvino_metadata(self.path)
            source = str(self.path / XML)
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(source), "CPU", COMPILE_CONFIG)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long texts
            raise CheckpointError(f"{self.path}: OpenVINO cannot read it: {_short(exc)}") from None
        names = [p.get_any_name() for p in self.compiled.inputs]
        if names != [INPUT_NAME]:
            raise CheckpointError(f"{self.path}: expected one input {INPUT_NAME!r}, found {names}")
        self.precision = str(self.meta.get("precision", "fp32"))
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: callers on several threads take turns

    def forward(self, images: torch.Tensor, targets: Any = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.training and targets is not None:
            raise RuntimeError("an OpenVINO model cannot be trained; train the .pt checkpoint")
        outs = self.run(np.ascontiguousarray(images.detach().float().cpu().numpy()))
        tensors = [torch.from_numpy(o).to(images.device) for o in outs]
        return tensors[0] if len(tensors) == 1 else tuple(tensors)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """NCHW float32 array -> the graph's outputs (copies: the request reuses its buffers)."""
        with self._lock:
            result = self._request.infer({0: x}, share_inputs=True, share_outputs=False)
            return [np.asarray(result[out]) for out in self.compiled.outputs]


def convert_model(model: nn.Module, task: Task, info: dict[str, Any], source: str) -> tuple[Any, dict[str, Any]]:
    """``model`` (a loaded PyTorch model of ``task``; info: its checkpoint's keys) as an fp32
    ``openvino.Model`` converted from its exported ONNX graph, and the folder's metadata."""
    ov = need_openvino()
    pre = info["preprocessing"]
    spec = GraphSpec(int(pre["imgsz"]), int(pre.get("in_channels", 3)))
    graph, outputs = trace_onnx(model, task, spec)
    try:
        ov_model = ov.convert_model(io.BytesIO(graph))
    except Exception as exc:  # noqa: BLE001 - the converter's errors are many and long
        raise CvappsError(f"export: OpenVINO cannot convert the {task.name} graph: {_short(exc)}") from None
    meta = {"format": OPENVINO_FORMAT, **graph_metadata(task, info, spec, source, outputs), "precision": "fp32",
            "openvino": str(ov.get_version()).split("-")[0]}
    return ov_model, meta


def check_converted(ov_model: Any, model: nn.Module, task: Task, spec: GraphSpec) -> float:
    """Max |OpenVINO - PyTorch| over two random batches; a CvappsError past the task's tolerance."""
    ov = need_openvino()
    compiled = ov.Core().compile_model(ov_model, "CPU", COMPILE_CONFIG)

    def run(x: np.ndarray) -> list[np.ndarray]:
        result = compiled(x)
        return [np.asarray(result[out]) for out in compiled.outputs]

    atol = task.onnx.parity_atol if task.onnx else 0.0
    return check_parity(run, model, spec, atol, "OpenVINO")


def save_folder(ov_model: Any, meta: dict[str, Any], folder: Path) -> Path:
    """Write ``model.xml/.bin`` + ``metadata.json`` into ``folder`` (made if missing), each file under a
    temporary name first and the metadata last: a reader never takes a half-written folder for a model
    (the previous metadata is removed before the IR files are replaced)."""
    ov = need_openvino()
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f".model-tmp{os.getpid()}-{threading.get_ident()}"
    xml, binary = stem.with_suffix(".xml"), stem.with_suffix(".bin")
    try:
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)  # fp16 weights would break fp32 parity
        (folder / META).unlink(missing_ok=True)
        os.replace(binary, folder / BIN)
        os.replace(xml, folder / XML)
        atomic_write_text(folder / META, json.dumps(meta, indent=1))
    except OSError as exc:
        raise CvappsError(f"cannot write the OpenVINO model to {folder}: {exc.strerror or exc}") from None
    finally:
        xml.unlink(missing_ok=True)
        binary.unlink(missing_ok=True)
    return folder


def folder_size(folder: Path) -> int:
    """Bytes of the model files of an OpenVINO folder."""
    return sum((folder / name).stat().st_size for name in (XML, BIN, META) if (folder / name).is_file())


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else f"{text[:200]}..."
