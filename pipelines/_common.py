"""Helpers shared by the pipeline scripts (not a public API): load a model of the right kind, combine predictors."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import cvapps
from cvapps.errors import CheckpointError


def load_model(path: str, device: str = "auto", batch: int = 8, part: str | None = None,
               needs: tuple[str, ...] = ()) -> cvapps.Model:
    """:func:`cvapps.load` (cvapps checkpoints, ONNX exports, native ultralytics files) as the model of
    ``part`` ("detect", "segment" or "classify": :meth:`cvapps.Model.part`, so a multitask model gives
    its boxes or masks), whose predictions carry every part in ``needs`` ("detections", "semantic",
    ...); a model of another kind is a one-line error."""
    model = cvapps.load(path, device=device, batch=batch)
    model = model.part(part) if part else model
    if not set(needs) <= model.parts:
        raise CheckpointError(f"{path} is {model.loaded.task.describe()}; this pipeline needs one that predicts "
                              f"{' and '.join(needs)}")
    return model


class Chain:
    """Two predictors over one pass of frames: yields ``(frame, (first_pred, second_pred))``.

    The first predictor's output frames feed the second, so each frame is decoded once and both
    keep their own batching and prefetch threads. Has the Predictor attributes the runner reads.
    """

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    @property
    def timings(self) -> dict[str, float]:
        keys = set(self.first.timings) | set(self.second.timings)
        return {k: self.first.timings.get(k, 0.0) + self.second.timings.get(k, 0.0) for k in keys}

    def predict(self, frames: Iterable[Any], first_options: dict[str, Any] | None = None,
                **second_options: Any) -> Iterator[tuple[Any, tuple[Any, Any]]]:
        firsts: deque[Any] = deque()

        def relay() -> Iterator[Any]:
            for frame, pred in self.first.predict(frames, **(first_options or {})):
                firsts.append(pred)
                yield frame

        for frame, pred in self.second.predict(relay(), **second_options):
            yield frame, (firsts.popleft(), pred)


class Pick:
    """A sink adapter: passes element ``index`` of a tuple prediction to ``sink``."""

    def __init__(self, sink: Any, index: int) -> None:
        self.sink, self.index = sink, index
        self.path = getattr(sink, "path", None)

    def start(self, source: Any) -> None:
        if hasattr(self.sink, "start"):
            self.sink.start(source)

    def write(self, frame: Any, prediction: Any) -> None:
        self.sink.write(frame, prediction[self.index])

    def close(self) -> None:
        self.sink.close()
