"""The prediction types: what every task's postprocess returns and every sink reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cvapps.structures.counts import Counts


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
    track_ids: (N,) int64 track id of each box (>= 1) when a tracker ran (``--track``), else None.
    counts: the line/zone counts of this frame (:class:`Counts`) when counting ran, else None.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    track_ids: np.ndarray | None = None
    counts: Counts | None = None

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
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            if len(self.track_ids) != len(self.boxes):
                raise ValueError(f"track_ids must be (N,) with N = {len(self.boxes)} boxes, got {self.track_ids.shape}")

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))

    def filter(self, keep: torch.Tensor) -> Detections:
        masks = self.masks[keep] if self.masks is not None else None
        track_ids = self.track_ids[np.asarray(keep)] if self.track_ids is not None else None
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], masks, track_ids, self.counts)


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


def part_of(prediction: object, kind: type) -> object | None:
    """``prediction`` as a ``kind`` (:class:`Detections` or :class:`SegmentationMask`): itself when it
    is one, a multitask prediction's part of that kind (None when the model has no such head), else None."""
    if isinstance(prediction, MultiTaskPrediction):
        return prediction.detections if kind is Detections else prediction.segmentation if kind is SegmentationMask else None
    return prediction if isinstance(prediction, kind) else None
