"""Classification accuracy and per-class precision/recall from a confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cvapps.metrics.plots import plot_confusion_matrix


def classification_metrics(matrix: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """accuracy, and precision/<class>, recall/<class> from a (true, predicted) confusion matrix."""
    total = matrix.sum()
    metrics = {"accuracy": float(np.trace(matrix) / total) if total else 0.0}
    for i, name in enumerate(class_names):
        predicted, actual = matrix[:, i].sum(), matrix[i].sum()
        metrics[f"precision/{name}"] = float(matrix[i, i] / predicted) if predicted else 0.0
        metrics[f"recall/{name}"] = float(matrix[i, i] / actual) if actual else 0.0
    return metrics


class ClassificationMetric:
    """predictions: Classification (``label``); targets: class indices."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        self.reset()

    def reset(self) -> None:
        k = len(self.class_names)
        self.matrix = np.zeros((k, k), dtype=np.int64)

    def process(self, predictions: Sequence[Any], targets: Sequence[int]) -> None:
        for pred, label in zip(predictions, targets):
            self.matrix[int(label), int(pred.label)] += 1

    def summarize(self) -> dict[str, float]:
        return classification_metrics(self.matrix, self.class_names)

    def plot(self, out_dir: Path) -> None:
        plot_confusion_matrix(self.matrix, self.class_names, Path(out_dir) / "confusion_matrix.png")
