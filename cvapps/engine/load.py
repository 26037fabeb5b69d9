"""The one model loader: a path or name -> model + task + class names + category ids + preprocessing.

:func:`load_model` takes

* a cvapps checkpoint (``.pt`` from ``cvapps train``; read with ``weights_only=True``): the model is
  rebuilt from its stored config with the build-only keys cleared (``ModelConfig.BUILD_ONLY_KEYS``:
  pretrained/backbone/detector/init weights are never re-read; the checkpoint holds the weights);
* a ``cvapps export`` ONNX file (run by onnxruntime behind the same interface);
* a native ultralytics model: a ``.yaml`` (random weights) or a ``.pt`` read without calling
  anything the file names, the model rebuilt from its checked yaml (:mod:`cvapps.tasks.ultralytics_files`;
  ``trust=True`` or ``CVAPPS_TRUST_MODEL=1`` allows a full unpickle of a file that needs one).

Every ``.pt`` is size-checked before it is read (:mod:`cvapps.io.archive`) and its weights must be finite.

The CLI, pipelines, benchmarks, export, summary and evaluation all load models through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cvapps.backbones.weights import load_state
from cvapps.checkpoint import ForeignCheckpoint, load_checkpoint
from cvapps.config import TaskConfig
from cvapps.engine.device import resolve_device
from cvapps.engine.inference_form import inference_form
from cvapps.engine.onnx_model import OnnxModel
from cvapps.engine.predict import Predictor
from cvapps.errors import CheckpointError, ConfigError
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

    @property
    def config(self) -> TaskConfig | None:
        """The validated config (stored config + overrides, build-only keys cleared); None if unknown."""
        if self.raw_config is None:
            return None
        cfg = config_from_dict(self.raw_config, self.overrides)
        cfg.model = cfg.model.without_build_only()
        return cfg

    def predictor(self, device: str | None = None, batch: int | None = None) -> Predictor:
        """A :class:`Predictor` running this model (ONNX models run in float32).

        A loaded model is for inference: it is put in its inference form in place here (BatchNorms
        folded, convolutions packed on the CPU: engine/inference_form.py); training, export and
        summaries load the checkpoint again."""
        device = device or self.device
        self.model = inference_form(self.model, resolve_device(device), inplace=True)
        return Predictor(self.task, self.model, self.class_names, self.preprocessing, device,
                         batch or self.batch, half=False if isinstance(self.model, OnnxModel) else None,
                         category_ids=self.category_ids)


def load_model(path_or_name: str | os.PathLike, *, tasks: str | tuple[str, ...] | None = None,
               device: str = "auto", batch: int = 8, trust: bool = False,
               overrides: list[str] | None = None, imgsz: int | None = None) -> LoadedModel:
    """Load any model cvapps runs (see the module docstring); ``tasks`` restricts what it may be.

    overrides: dotted config overrides applied to the stored config (e.g. ``data.root=DIR``);
    imgsz: input size for native ultralytics models (default: the size they were trained at).
    Every failure is a one-line CheckpointError.
    """
    spec = str(path_or_name)
    path = Path(spec)
    wanted = (tasks,) if isinstance(tasks, str) else tuple(tasks or ())
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        loaded = _load_onnx(path, device)
    elif suffix in YAML_SUFFIXES or (suffix == ".pt" and not path.exists() and PUBLISHED.match(path.name)):
        loaded = _load_native(spec, trust, imgsz)
    elif not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    else:
        try:
            loaded = _load_cvapps(path, overrides)
        except ForeignCheckpoint:
            loaded = _load_native(spec, trust, imgsz)
    if wanted and loaded.task.name not in wanted:
        raise CheckpointError(f"{spec} is {loaded.task.describe()}; this command needs {' or '.join(map(repr, wanted))}")
    loaded.device, loaded.batch, loaded.overrides = device, batch, list(overrides or [])
    return loaded


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
                       str(path), info=meta, raw_config=meta.get("config"))


def _load_native(spec: str, trust: bool, imgsz: int | None) -> LoadedModel:
    # The ultralytics task module imports ultralytics (heavy): only loaded for native models.
    from cvapps.tasks.ultralytics_native import UltralyticsTask, coco_category_ids, native_detector, trained_on

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
