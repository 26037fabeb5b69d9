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
from cvapps.metrics.base import Metric


@dataclass
class DatasetSplits:
    """train/val datasets yield ``(image uint8 CHW tensor, target)``; None items are skipped bad files."""

    train: Dataset | None  # None when built for evaluation only (``val_only=True``)
    val: Dataset
    class_names: list[str]
    # Optional extras a task needs to evaluate (e.g. COCO ground truth of the val split).
    val_extra: Any = None


class Task:
    """Base class of the four task modules (one instance each, no state)."""

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
