"""Classification accuracy and per-class precision/recall from a confusion matrix."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cvapps.metrics.base import ConfusionMatrixMetric


def classification_metrics(matrix: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """accuracy, and precision/<class>, recall/<class> from a (true, predicted) confusion matrix."""
    total = matrix.sum()
    metrics = {"accuracy": float(np.trace(matrix) / total) if total else 0.0}
    for i, name in enumerate(class_names):
        predicted, actual = matrix[:, i].sum(), matrix[i].sum()
        metrics[f"precision/{name}"] = float(matrix[i, i] / predicted) if predicted else 0.0
        metrics[f"recall/{name}"] = float(matrix[i, i] / actual) if actual else 0.0
    return metrics


class ClassificationMetric(ConfusionMatrixMetric):
    """predictions: Predictions, their ``classification.label``; targets: class indices."""

    def process(self, predictions: Sequence[Any], targets: Sequence[int]) -> None:
        for pred, label in zip(predictions, targets):
            self.matrix[int(label), pred.classification.label] += 1

    def summarize(self) -> dict[str, float]:
        return classification_metrics(self.matrix, self.class_names)
