"""The metric interface the evaluation loop (:mod:`cvapps.engine.evaluate`) drives."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence


class Metric(Protocol):
    """Accumulates predictions of one evaluation pass.

    process: ``predictions`` are the task's postprocessed outputs (Classification,
    SegmentationMask or Detections, in original image pixels); ``targets`` the matching ground
    truth (class index, class-index mask HxW, or COCO image id).
    """

    def reset(self) -> None: ...

    def process(self, predictions: Sequence[Any], targets: Sequence[Any]) -> None: ...

    def summarize(self) -> dict[str, float]: ...

    def plot(self, out_dir: Path) -> None: ...
