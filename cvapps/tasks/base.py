"""What every task provides, so one training loop, one evaluation loop and one predictor serve all.

A task's model obeys one signature: ``model(images, targets=None)`` where ``images`` is a float
tensor ``(B, C, H, W)`` in [0, 1] (RGB, already resized/letterboxed to ``data.imgsz``; the model
normalises it itself). In ``model.train()`` mode with targets it returns a dict of scalar losses
that the loop sums; in ``model.eval()`` mode it returns raw predictions in network-input pixels,
which :meth:`Task.postprocess` maps back to the original images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from cvapps.config import TaskConfig
from cvapps.data.letterbox import LetterboxMeta, letterbox
from cvapps.errors import CheckpointError
from cvapps.metrics.base import Metric


@dataclass
class DatasetSplits:
    """train/val datasets yield ``(image uint8 CHW tensor, target)``; None items are skipped bad files."""

    train: Dataset | None  # None when built for evaluation only (``val_only=True``)
    val: Dataset
    class_names: list[str]
    # Optional extras a task needs to evaluate (e.g. COCO ground truth of the val split).
    val_extra: Any = None


@dataclass(frozen=True)
class OnnxExport:
    """How a task's model exports to ONNX: each graph output's (name, description) and the absolute
    tolerance of the onnxruntime-vs-PyTorch parity check (see :mod:`cvapps.export`)."""

    outputs: tuple[tuple[str, str], ...]
    parity_atol: float


class Task:
    """Base class of the task modules (one registered instance each, no state; see
    :mod:`cvapps.tasks.registry`). A task declares what it can do as class variables."""

    name: ClassVar[str]
    config_class: ClassVar[type[TaskConfig]]
    primary_metric: ClassVar[str]          # key in the metric's summary that picks best.pt
    resize_mode: ClassVar[str] = "letterbox"  # or "stretch" (classification)
    # Models that take any input size that is a multiple of this (FCN, YOLO, Faster R-CNN) get
    # "rect" letterboxing at inference; None: always the square imgsz x imgsz input.
    rect_stride: ClassVar[int | None] = 32
    # CPU memory layout of prediction, measured per model family (engine/device.py::choose_memory_format)
    cpu_channels_last: ClassVar[bool] = False
    # postprocess options of evaluation (e.g. COCO's protocol keeps nearly every detection)
    eval_options: ClassVar[dict[str, Any]] = {}

    # --- what it can do: declared by each task, read by the registry, CLI, API and exporter -----------
    # Parts its predictions can carry (names of cvapps.structures.prediction.PARTS); a model's own
    # parts may be fewer (a multitask model's heads): parts_of().
    parts: ClassVar[frozenset[str]]
    # CLI commands that run its models ("classify", "segment", "detect": cvapps.tasks.registry.COMMANDS);
    # a multitask model serves detect and segment as one of its parts (as_part()).
    commands: ClassVar[frozenset[str]]
    # Keyword options its postprocess takes (Predictor.predict / Model.predict pass them through).
    postprocess_options: ClassVar[frozenset[str]] = frozenset()
    # The command whose part this task gives of a bigger model (a multitask model as its detector);
    # None: the model's whole prediction.
    part: ClassVar[str | None] = None
    # Its boxes can be tracked and counted (cvapps.analytics; `--track`, `--count-line`, `--zone`).
    tracks: ClassVar[bool] = False
    # Its model sees the letterboxed image as is and has a ``backbone`` module, so a tracker can pool
    # appearance from the backbone's maps at the box (cvapps.analytics.embed; `--track ocsort`).
    backbone_embeddings: ClassVar[bool] = False
    # Trained by train_external() (the framework's own trainer), not by cvapps' training loop.
    trains_externally: ClassVar[bool] = False
    # How `cvapps export` writes it to ONNX; None: not exported (onnx_refusal says why, when known).
    onnx: ClassVar[OnnxExport | None] = None
    onnx_refusal: ClassVar[str] = ""
    # Some of its models may leave parameters unused in a training step (e.g. Faster R-CNN on images
    # without boxes), so DDP must look for them; a task whose models never do may say False (faster).
    ddp_find_unused_parameters: ClassVar[bool] = True
    # How messages name its models ("" -> "a 'NAME' model").
    label: ClassVar[str] = ""

    # --- building ---------------------------------------------------------------------------
    def build_model(self, cfg: TaskConfig, class_names: list[str]) -> nn.Module:
        raise NotImplementedError

    def build_datasets(self, cfg: TaskConfig, val_only: bool = False) -> DatasetSplits:
        """Train and val datasets; ``val_only``: only what evaluation needs (a dataset with
        just a val split is enough; ``train`` is then None)."""
        raise NotImplementedError

    def preprocessing(self, cfg: TaskConfig) -> dict[str, Any]:
        """What a checkpoint stores so every predictor prepares images as training did."""
        return {"imgsz": cfg.data.imgsz, "resize": self.resize_mode, "in_channels": cfg.model.in_channels}

    def collate(self, batch: Sequence) -> tuple[torch.Tensor, Any]:
        """Stack images (uint8) and gather targets; drop None items (unreadable files)."""
        batch = [b for b in batch if b is not None]
        if not batch:
            return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), []
        images = torch.stack([b[0] for b in batch])
        return images, [b[1] for b in batch]

    def targets_to(self, targets: Any, device: torch.device) -> Any:
        """Move one batch's targets to the device (tensors, or lists of dicts of tensors)."""
        if isinstance(targets, torch.Tensor):
            return targets.to(device, non_blocking=True)
        if isinstance(targets, list):
            return [self.targets_to(t, device) for t in targets]
        if isinstance(targets, dict):
            return {k: self.targets_to(v, device) for k, v in targets.items()}
        return targets

    # --- evaluating ---------------------------------------------------------------------------
    def build_metric(self, splits: DatasetSplits) -> Metric:
        """A fresh metric object for the val split (see :mod:`cvapps.metrics`)."""
        raise NotImplementedError

    def eval_items(self, dataset: Dataset) -> Iterator[tuple[str, Callable[[], tuple[np.ndarray, Any]]]]:
        """``(name, load)`` per val item; ``load()`` returns ``(BGR uint8 image in original pixels,
        target)`` where target is what the metric compares with, in original pixels. It raises
        ImageReadError for an unreadable file (the loop reports and skips it)."""
        raise NotImplementedError

    # --- predicting ---------------------------------------------------------------------------
    def preprocess(self, image_bgr: np.ndarray, imgsz: int, in_channels: int = 3, rect: bool = False
                   ) -> tuple[np.ndarray, LetterboxMeta]:
        """One BGR uint8 image -> network-input RGB (or gray) uint8 HxWxC and its letterbox meta.

        rect: pad only to a multiple of ``rect_stride`` (inference), not to the full square.
        """
        stride = self.rect_stride if rect and self.resize_mode == "letterbox" else None
        return letterbox(image_bgr, imgsz, self.resize_mode, in_channels, stride=stride)

    def postprocess(self, outputs: Any, metas: list[LetterboxMeta], **options: Any) -> list[Any]:
        """Raw eval outputs of a batch -> one prediction per image, in original image pixels."""
        raise NotImplementedError

    # --- what a model of it is ---------------------------------------------------------------
    def describe(self) -> str:
        """How messages name its models: "a 'yolo' model"."""
        return f"{self.label or f'a {self.name!r}'} model"

    def parts_of(self, raw_config: dict[str, Any] | None) -> frozenset[str]:
        """The parts the predictions of a model with this stored config carry (default: :attr:`parts`)."""
        return self.parts

    def as_part(self, loaded: Any, part: str) -> Any:
        """``loaded`` (a :class:`cvapps.engine.load.LoadedModel` of this task) as the model of the
        command ``part`` ("detect", "segment", "classify"); a CheckpointError when it serves none such."""
        from cvapps.tasks.registry import COMMANDS, tasks_serving

        if part not in COMMANDS:
            raise ValueError(f"part must be one of {tuple(COMMANDS)}, got {part!r}")
        if part not in self.commands:
            raise CheckpointError(f"{loaded.source} is {self.describe()}; this needs a {COMMANDS[part]} (a model of "
                                  f"task {' or '.join(map(repr, tasks_serving(part)))})")
        return loaded

    def onnx_outputs(self, model: nn.Module) -> list[tuple[str, str]]:
        """(name, description) of each output of ``model``'s exported graph (see :attr:`onnx`)."""
        if self.onnx is None:
            raise CheckpointError(f"{self.describe()} is not exported to ONNX")
        return list(self.onnx.outputs)

    def train_external(self, cfg: TaskConfig, device: torch.device, *, progress: bool = True,
                       trust: bool = False, log: Callable[[str], None] = print) -> tuple[float, list[dict[str, float]]]:
        """Train with the framework's own trainer (tasks with :attr:`trains_externally`); returns
        (best primary metric, history rows)."""
        raise NotImplementedError(f"task {self.name!r} trains with cvapps' training loop")
