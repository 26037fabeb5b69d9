"""Every head's metric over one evaluation pass of a multi-task model, and the one score that picks best.pt.

* detect: COCO box mAP (:class:`~cvapps.metrics.coco.CocoDetectionMetric`): ``map`` (AP@[.5:.95]),
  ``map50``, ``map75``, ``ap/<class>``; images without box labels are left out;
* segment: :class:`~cvapps.metrics.segmentation.SegmentationMetric`: ``miou``, ``pixel_acc``,
  ``iou/<class>``; images without a mask are left out;
* classify (multi-label presence): ``presence_acc`` (share of right yes/no decisions over images x
  classes), ``presence_exact`` (images with every class right) and ``presence_f1`` (micro F1).

``score``, the value ``best.pt`` is chosen by, is the mean of the heads' main metrics:
``map`` (mAP50-95) for detect, ``miou`` for segment, ``presence_f1`` for classify.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cvapps.metrics.coco import CocoDetectionMetric
from cvapps.metrics.segmentation import SegmentationMetric

#: per head: the summary key that enters ``score``
MAIN_METRIC = {"detect": "map", "segment": "miou", "classify": "presence_f1"}


class PresenceMetric:
    """Multi-label presence: predictions' ``presence.labels`` (classes said present); targets the
    sorted present classes (None: unknown, left out)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.truth: list[np.ndarray] = []
        self.said: list[np.ndarray] = []

    def process(self, predictions: Sequence[Any], targets: Sequence[Any]) -> None:
        for pred, labels in zip(predictions, targets):
            if labels is None or pred.presence is None:
                continue
            truth, said = np.zeros(self.num_classes, bool), np.zeros(self.num_classes, bool)
            truth[list(labels)] = True
            said[pred.presence.labels] = True
            self.truth.append(truth)
            self.said.append(said)

    def summarize(self) -> dict[str, float]:
        if not self.truth:
            return {"presence_acc": 0.0, "presence_exact": 0.0, "presence_f1": 0.0}
        truth, said = np.stack(self.truth), np.stack(self.said)
        tp, fp, fn = (truth & said).sum(), (~truth & said).sum(), (truth & ~said).sum()
        return {"presence_acc": float((truth == said).mean()),
                "presence_exact": float((truth == said).all(1).mean()),
                "presence_f1": float(2 * tp / max(1, 2 * tp + fp + fn))}

    def plot(self, out_dir: Path) -> None:
        pass


class MultiTaskMetric:
    """predictions: :class:`~cvapps.structures.Prediction` (each head's metric reads its part);
    targets: dicts ``{"image_id" (None: no box labels), "mask" (HxW or None), "labels" (present classes or None)}``."""

    def __init__(self, heads: Sequence[str], gt: dict[str, Any] | None, class_names: list[str],
                 category_ids: list[int]) -> None:
        self.parts: dict[str, Any] = {}
        if "detect" in heads:
            self.parts["detect"] = CocoDetectionMetric(gt or {"images": [], "annotations": [], "categories": []},
                                                       class_names, category_ids)
        if "segment" in heads:
            self.parts["segment"] = SegmentationMetric(["background", *class_names])
        if "classify" in heads:
            self.parts["classify"] = PresenceMetric(len(class_names))

    def reset(self) -> None:
        for metric in self.parts.values():
            metric.reset()

    def process(self, predictions: Sequence[Any], targets: Sequence[dict[str, Any]]) -> None:
        pairs = list(zip(predictions, targets))
        if "detect" in self.parts:
            kept = [(p, t["image_id"]) for p, t in pairs if t["image_id"] is not None]
            self.parts["detect"].process([d for d, _ in kept], [i for _, i in kept])
        if "segment" in self.parts:
            kept = [(p, t["mask"]) for p, t in pairs if t["mask"] is not None]
            self.parts["segment"].process([s for s, _ in kept], [m for _, m in kept])
        if "classify" in self.parts:
            self.parts["classify"].process([p for p, _ in pairs], [t["labels"] for _, t in pairs])

    def summarize(self) -> dict[str, float]:
        """Every head's metrics in one dict, plus ``score`` (see the module docstring)."""
        metrics: dict[str, float] = {}
        for metric in self.parts.values():
            metrics.update(metric.summarize())
        main = [metrics[MAIN_METRIC[name]] for name in self.parts]
        metrics["score"] = float(np.mean(main)) if main else 0.0
        return metrics

    def plot(self, out_dir: Path) -> None:
        for metric in self.parts.values():
            metric.plot(out_dir)
