"""The metric interface the evaluation loop (:mod:`cvapps.engine.evaluate`) drives."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from cvapps.metrics.plots import plot_confusion_matrix


class Metric(Protocol):
    """Accumulates predictions of one evaluation pass.

    process: ``predictions`` are the task's postprocessed outputs (one
    :class:`~cvapps.structures.Prediction` per image, in original image pixels; each metric reads its
    part); ``targets`` the matching ground truth (class index, class-index mask HxW, or COCO image id).
    """

    def reset(self) -> None: ...

    def process(self, predictions: Sequence[Any], targets: Sequence[Any]) -> None: ...

    def summarize(self) -> dict[str, float]: ...

    def plot(self, out_dir: Path) -> None: ...


class ConfusionMatrixMetric:
    """Shared part of the metrics built on a (true, predicted) K x K confusion matrix."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        self.reset()

    def reset(self) -> None:
        k = len(self.class_names)
        self.matrix = np.zeros((k, k), dtype=np.int64)

    def plot(self, out_dir: Path) -> None:
        plot_confusion_matrix(self.matrix, self.class_names, Path(out_dir) / "confusion_matrix.png")
