"""The one model loader: a path or name -> model + task + class names + category ids + preprocessing.

:func:`load_model` takes

* a cvapps checkpoint (``.pt`` from ``cvapps train``; read with ``weights_only=True``): the model is
  rebuilt from its stored config with the build-only keys cleared (``ModelConfig.BUILD_ONLY_KEYS``:
  pretrained/backbone/detector/init weights are never re-read; the checkpoint holds the weights);
* a ``cvapps export`` ONNX file (run by onnxruntime behind the same interface) or OpenVINO folder
  (run by OpenVINO: :mod:`cvapps.engine.openvino_model`);
* a native ultralytics model: a ``.yaml`` (random weights) or a ``.pt`` read without calling
  anything the file names, the model rebuilt from its checked yaml (:mod:`cvapps.tasks.ultralytics_files`;
  ``trust=True`` or ``CVAPPS_TRUST_MODEL=1`` allows a full unpickle of a file that needs one).

Every ``.pt`` is size-checked before it is read (:mod:`cvapps.io.archive`) and its weights must be finite.

The CLI, pipelines, benchmarks, export, summary and evaluation all load models through it.
:func:`load_on_runtime` is the same with a runtime chosen (``--runtime``: :mod:`cvapps.engine.runtime`):
``load_model`` runs each file in its own runtime (``.pt`` torch, ``.onnx`` onnxruntime, folder OpenVINO).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cvapps.backbones.weights import load_state
from cvapps.checkpoint import ForeignCheckpoint, load_checkpoint
from cvapps.config import TaskConfig
from cvapps.engine.device import resolve_device
from cvapps.engine.inference_form import inference_form
from cvapps.engine.input_size import set_imgsz
from cvapps.engine.onnx_model import OnnxModel
from cvapps.engine.openvino_model import OpenVinoModel
from cvapps.engine.predict import PredictOptions, Predictor
from cvapps.engine.runtime import cached_openvino, check_runtime, openvino_installed
from cvapps.errors import CheckpointError, ConfigError, CvappsError
from cvapps.tasks import config_from_dict, get_task
from cvapps.tasks.base import Task
from cvapps.tasks.ultralytics_files import PUBLISHED, YAML_SUFFIXES


@dataclass
class LoadedModel:
    """A ready model and what predicting or evaluating with it needs.

    preprocessing: ``{"imgsz", "resize", "in_channels"}``; category_ids: class index -> COCO
    category id (None: index + 1); info: the checkpoint's other keys (epoch, metrics, ...).
    """

    task: Task
    model: nn.Module
    class_names: list[str]
    category_ids: list[int] | None
    preprocessing: dict[str, Any]
    source: str
    device: str = "auto"
    batch: int = 8
    info: dict[str, Any] = field(default_factory=dict)
    raw_config: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)
    runtime: str = "torch"  # the engine that runs it: torch, onnxruntime or openvino

    @property
    def config(self) -> TaskConfig | None:
        """The validated config (stored config + overrides, build-only keys cleared); None if unknown."""
        if self.raw_config is None:
            return None
        cfg = config_from_dict(self.raw_config, self.overrides)
        cfg.model = cfg.model.without_build_only()
        return cfg

    def predictor(self, device: str | None = None, batch: int | None = None) -> Predictor:
        """A :class:`Predictor` running this model (exported models run in float32).

        A loaded model is for inference: it is put in its inference form in place here (BatchNorms
        folded, convolutions packed on the CPU: engine/inference_form.py); training, export and
        summaries load the checkpoint again."""
        device = device or self.device
        self.model = inference_form(self.model, resolve_device(device), inplace=True)
        options = PredictOptions(device=device, batch=batch or self.batch,
                                 half=False if self.runtime != "torch" else None)
        return Predictor(self.task, self.model, self.class_names, self.preprocessing, options,
                         category_ids=self.category_ids)


@dataclass(frozen=True)
class LoadOptions:
    """How :func:`load_on_runtime` loads: the task(s) the model must be, device, batch, trust (a full
    unpickle of an ultralytics file that needs one), config overrides, imgsz: the input size to predict
    at (:func:`cvapps.engine.input_size.set_imgsz`)."""

    tasks: str | tuple[str, ...] | None = None
    device: str = "auto"
    batch: int = 8
    trust: bool = False
    overrides: list[str] | None = None
    imgsz: int | None = None


def load_model(path_or_name: str | os.PathLike, *, tasks: str | tuple[str, ...] | None = None,
               device: str = "auto", batch: int = 8, trust: bool = False,
               overrides: list[str] | None = None, imgsz: int | None = None) -> LoadedModel:
    """Load any model cvapps runs (see the module docstring), each in its own runtime; ``tasks``
    restricts what it may be.

    overrides: dotted config overrides applied to the stored config (e.g. ``data.root=DIR``);
    imgsz: the input size to predict at (default: the size the model was trained or exported at).
    Every failure is a one-line CheckpointError.
    """
    return load_on_runtime(path_or_name, None, LoadOptions(tasks, device, batch, trust, overrides, imgsz))


def load_on_runtime(path_or_name: str | os.PathLike, runtime: str | None,
                    options: LoadOptions = LoadOptions()) -> LoadedModel:
    """:func:`load_model` run by ``runtime`` (torch, onnxruntime, openvino, auto; None: the file's own;
    see :mod:`cvapps.engine.runtime`). A runtime the model cannot run in is a one-line error."""
    runtime = check_runtime(runtime)
    spec = str(path_or_name)
    path = Path(spec)
    wanted = (options.tasks,) if isinstance(options.tasks, str) else tuple(options.tasks or ())
    suffix = path.suffix.lower()
    device = options.device
    on_cpu = runtime in ("openvino", "auto") and resolve_device(device).type == "cpu"
    use_openvino = runtime == "openvino" or (runtime == "auto" and on_cpu and openvino_installed())
    if path.is_dir():
        _refuse(runtime in ("torch", "onnxruntime"), f"{path} is an OpenVINO model folder: it runs with --runtime "
                                                      "openvino (or auto)")
        loaded = _load_openvino(path, device)
    elif suffix == ".onnx":
        _refuse(runtime == "torch", f"{path} is an ONNX model: it runs with --runtime onnxruntime, openvino or auto")
        loaded = _load_openvino(path, device) if use_openvino and path.is_file() else _load_onnx(path, device)
    elif suffix in YAML_SUFFIXES or (suffix == ".pt" and not path.exists() and PUBLISHED.match(path.name)):
        _refuse(runtime in ("onnxruntime", "openvino"), f"{spec}: native ultralytics models run in torch only "
                                                        "(--runtime torch)")
        loaded = _load_native(spec, options.trust, options.imgsz)
    elif not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    else:
        _refuse(runtime == "onnxruntime", f"{path}: --runtime onnxruntime runs an .onnx file; export it first: "
                                          f"cvapps export {path} --format onnx")
        loaded = _load_checkpoint(path, runtime if use_openvino else "torch", options)
    if wanted and loaded.task.name not in wanted:
        raise CheckpointError(f"{spec} is {loaded.task.describe()}; this command needs {' or '.join(map(repr, wanted))}")
    loaded.device, loaded.batch, loaded.overrides = device, options.batch, list(options.overrides or [])
    if options.imgsz is not None:  # cvapps checkpoints and exports (native models took it when built)
        set_imgsz(loaded, options.imgsz)
    return loaded


def _refuse(condition: bool, message: str) -> None:
    if condition:
        raise CheckpointError(message)


def _load_checkpoint(path: Path, runtime: str, options: LoadOptions) -> LoadedModel:
    """A ``.pt``: a cvapps checkpoint (in torch, or converted to OpenVINO and cached) or a native one."""
    overrides = options.overrides
    if runtime != "torch" and any(o.split("=", 1)[0].startswith("model.") for o in overrides or []):
        # the cached conversion is of the stored model: model.* overrides would be silently dropped
        _refuse(runtime == "openvino", f"{path}: model.* overrides need --runtime torch")
        runtime = "torch"
    if runtime == "auto" and options.imgsz is not None:
        runtime = "torch"  # an export takes only its own size; torch predicts at any --imgsz
    try:
        if runtime == "torch":
            return _load_cvapps(path, overrides)
        try:
            folder = cached_openvino(path, lambda: _load_cvapps(path, overrides))
        except ForeignCheckpoint:
            raise
        except CvappsError as exc:
            if runtime == "openvino":
                raise
            print(f"note: running {path.name} in torch: {exc}", file=sys.stderr)  # auto: what works
            return _load_cvapps(path, overrides)
        loaded = _load_openvino(folder, options.device)
        loaded.source = str(path)  # the model is the checkpoint (val, Ray workers reload it by path)
        return loaded
    except ForeignCheckpoint:
        _refuse(runtime == "openvino", f"{path}: native ultralytics models run in torch only (--runtime torch)")
        return _load_native(str(path), options.trust, options.imgsz)


def _load_cvapps(path: Path, overrides: list[str] | None) -> LoadedModel:
    ckpt = load_checkpoint(path)
    try:  # the stored config alone first: failing here is the file's fault, not the user's overrides'
        task = get_task(ckpt["task"])
        config_from_dict(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: damaged cvapps checkpoint: its stored {str(exc).removeprefix('config error: ')}"
                              ) from None
    names = list(ckpt["class_names"])
    cfg = config_from_dict(ckpt["config"], overrides)
    cfg.model = cfg.model.without_build_only()
    model = task.build_model(cfg, names)
    load_state(model, ckpt["model"], str(path), what=f"the {ckpt['task']} model its config describes")
    info = {k: v for k, v in ckpt.items() if k not in ("model", "train_state")}
    return LoadedModel(task, model.eval(), names, ckpt.get("category_ids"), dict(ckpt["preprocessing"]),
                       str(path), info=info, raw_config=ckpt["config"])


def _load_onnx(path: Path, device: str) -> LoadedModel:
    model = OnnxModel(path, resolve_device(device))
    meta = model.meta
    task = get_task(meta["task"])
    # Exports fix height and width (only the batch is dynamic), so no rect letterboxing.
    preprocessing = {**meta["preprocessing"], "fixed_size": True}
    return LoadedModel(task, model, list(meta["class_names"]), meta.get("category_ids"), preprocessing,
                       str(path), info=meta, raw_config=meta.get("config"), runtime="onnxruntime")


def _load_openvino(path: Path, device: str) -> LoadedModel:
    """An OpenVINO folder, or an ``.onnx`` file run by OpenVINO (same metadata, same fixed input size)."""
    model = OpenVinoModel(path, resolve_device(device))
    meta = model.meta
    preprocessing = {**meta["preprocessing"], "fixed_size": True}
    return LoadedModel(get_task(meta["task"]), model, list(meta["class_names"]), meta.get("category_ids"),
                       preprocessing, str(path), info=meta, raw_config=meta.get("config"), runtime="openvino")


def _load_native(spec: str, trust: bool, imgsz: int | None) -> LoadedModel:
    # The ultralytics task module imports ultralytics (heavy): only loaded for native models.
    from cvapps.tasks.ultralytics_native import (
        UltralyticsTask,
        coco_category_ids,
        native_detector,
        trained_on,
    )

    model, names, trained_size, ckpt = native_detector(spec, trust=trust)
    size = int(imgsz or trained_size)
    if size % 32:
        raise ConfigError(f"--imgsz {size}: ultralytics models need a multiple of 32")
    task = UltralyticsTask(model.num_classes, model.end2end)
    # For `cvapps val`: the dataset a `cvapps train` run of ultralytics used.
    root = trained_on(ckpt["train_args"]) if isinstance(ckpt.get("train_args"), dict) else None
    data = {"imgsz": size, **({"root": root} if root else {})}
    raw = {"task": task.name, "model": {"model": spec}, "data": data}
    info = {k: v for k, v in ckpt.items() if k in ("date", "version", "epoch", "train_metrics")}
    return LoadedModel(task, model, names, coco_category_ids(names),
                       {"imgsz": size, "resize": "letterbox", "in_channels": 3}, spec, info=info, raw_config=raw)
