"""Segmentation mIoU, pixel accuracy and per-class IoU from a pixel confusion matrix."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cvapps.formats.masks import IGNORE_INDEX
from cvapps.metrics.base import ConfusionMatrixMetric


def segmentation_metrics(matrix: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """mIoU, pixel accuracy and iou/<class> from a (true, predicted) pixel confusion matrix.

    A class that is neither in the ground truth nor predicted has no IoU: it is reported as NaN
    and left out of the mean.
    """
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    total = matrix.sum()
    metrics = {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "pixel_acc": float(tp.sum() / total) if total else 0.0,
    }
    for name, value in zip(class_names, iou):
        metrics[f"iou/{name}"] = float(value)
    return metrics


class SegmentationMetric(ConfusionMatrixMetric):
    """predictions: Predictions, their ``semantic`` mask (HxW class indices, original pixels);
    targets: the ground-truth class-index masks HxW of the same images (255 = ignore)."""

    def process(self, predictions: Sequence[Any], targets: Sequence[np.ndarray]) -> None:
        k = len(self.class_names)
        for pred, mask in zip(predictions, targets):
            truth = np.asarray(mask).astype(np.int64)
            valid = truth != IGNORE_INDEX
            counts = np.bincount(truth[valid] * k + pred.semantic.mask.astype(np.int64)[valid], minlength=k * k)
            self.matrix += counts[: k * k].reshape(k, k)

    def summarize(self) -> dict[str, float]:
        return segmentation_metrics(self.matrix, self.class_names)
