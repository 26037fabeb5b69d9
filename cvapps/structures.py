"""Plain data types that flow between sources, tasks and sinks.

Every task's predictions are one of :class:`Classification`, :class:`SegmentationMask` or
:class:`Detections`; Faster R-CNN, YOLO and native ultralytics models all return
:class:`Detections`, so drawing, COCO export and pipelines are shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Frame:
    """One image from a source.

    image: HxWx3 BGR uint8 (OpenCV order), EXIF orientation already applied.
    source: file path, or ``"video.mp4#frame=000123"`` style name for video frames.
    index: position in the source (frame number for video, file number for folders).
    timestamp: seconds since the start of the video/stream (0.0 for still images).
    """

    image: np.ndarray
    source: str
    index: int = 0
    timestamp: float = 0.0


@dataclass
class Classification:
    """label: class index; score: its probability; topk: [(label, prob), ...] best first."""

    label: int
    score: float
    topk: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class SegmentationMask:
    """mask: HxW uint8 class index per pixel in original image pixels (0 = background).

    scores: per-class mean confidence over the pixels assigned to that class (K,).
    """

    mask: np.ndarray
    scores: np.ndarray | None = None


@dataclass
class Detections:
    """Detections for one image.

    boxes: (N, 4) float32, xyxy in original image pixels.
    scores: (N,) float32 confidences in [0, 1].
    labels: (N,) int64 class indices into the checkpoint's class names (0-based, no background).
    masks: (N, H, W) bool instance masks in original image pixels (H, W = the image's size), one per
        box; None for box-only models. Native ultralytics ``-seg`` models fill it.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float32).reshape(-1, 4).cpu()
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1).cpu()
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1).cpu()
        if not (len(self.boxes) == len(self.scores) == len(self.labels)):
            raise ValueError("boxes, scores and labels must have the same length")
        if self.masks is not None:
            self.masks = torch.as_tensor(self.masks).to(dtype=torch.bool, device="cpu")
            if self.masks.ndim != 3 or len(self.masks) != len(self.boxes):
                raise ValueError(f"masks must be (N, H, W) with N = {len(self.boxes)} boxes, "
                                 f"got {tuple(self.masks.shape)}")

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))

    def filter(self, keep: torch.Tensor) -> "Detections":
        masks = self.masks[keep] if self.masks is not None else None
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], masks)


@dataclass
class MultiTaskPrediction:
    """Everything one multi-task forward predicts for one image (a field is None when the model has
    no such head).

    detections: boxes/scores/labels in original pixels, labels 0-based into the class names.
    segmentation: class-index mask in original pixels; mask value c is class ``c - 1`` of the
        class names (0 = background), i.e. the segmentation classes are ``["background", *names]``.
    labels: (M,) int64 classes predicted present in the image (multi-label, presence score >=
        the threshold); label_scores: (K,) float32 presence probability of every class.
    """

    detections: Detections | None = None
    segmentation: SegmentationMask | None = None
    labels: torch.Tensor | None = None
    label_scores: np.ndarray | None = None
