"""Video analytics on top of any detector's output stream: tracking (:mod:`.tracking`), line and zone
counting (:mod:`.counting`).

:class:`Analytics` is one step applied to each ``(frame, prediction)`` in input order, after the
predictor and before the sinks: track (ids on ``prediction.detections``), then count (``prediction.counts``).
:class:`AnalyticsPredictor` wraps a :class:`~cvapps.engine.predict.Predictor` so the runner, the
API and pipelines use it unchanged (it has the Predictor attributes they read)::

    frames -> Predictor.predict -> Analytics (track, count) -> sinks (draw, JSON lines, COCO, counts.json)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from cvapps.analytics.counting import Counter, CountsFile, parse_line, parse_zone
from cvapps.analytics.embed import attach_embeddings
from cvapps.analytics.tracking import (
    DEFAULT_BUFFER,
    DEFAULT_FPS,
    EMBEDDING,
    TRACKERS,
    Tracker,
    source_key,
)
from cvapps.errors import CvappsError, shorten
from cvapps.structures import Frame, Prediction

__all__ = [
    "TRACKERS",
    "TRACK_CONF",
    "Analytics",
    "AnalyticsPredictor",
    "Counter",
    "CountsFile",
    "Tracker",
    "make_analytics",
    "parse_line",
    "parse_zone",
    "source_key",
]

#: The detector score threshold used while tracking unless one is given: the trackers' low threshold
#: (``track_low_thresh`` of ultralytics' tracker YAML), so ByteTrack's second association sees the
#: low-score boxes of partly hidden objects; tracks still start only from boxes >= 0.25.
TRACK_CONF = 0.1


def make_analytics(class_names: Sequence[str], detector: bool = True, *, track: str | bool | None = None,
                   track_buffer: str | float | None = None,
                   count_lines: Sequence[str | Sequence[float]] = (),
                   zones: Sequence[str | Sequence[Any]] = ()) -> Analytics | None:
    """The analytics step asked for, or None when nothing is.

    track: ``"bytetrack"``, ``"botsort"``, ``"ocsort"`` (True: bytetrack); track_buffer: frames or
    ``"Ns"`` seconds (None: the tracker's default, :data:`~cvapps.analytics.tracking.DEFAULT_BUFFERS`); count_lines: ``"x1,y1,x2,y2"`` or 4
    numbers each (they need tracks, so they turn on bytetrack); zones: ``"x1,y1,x2,y2,x3,y3,..."``
    or [(x, y), ...] each. One line or zone may also be given alone, not in a list (a string as the
    CLI takes it, 4 numbers, or a list of (x, y) points). detector: False refuses any of them
    (one-line error).
    """
    lines = [parse_line(c) for c in _specs(count_lines, "count_lines", _is_line)]
    polys = [parse_zone(z) for z in _specs(zones, "zones", _is_polygon)]
    if not (track or lines or polys):
        return None
    if not detector:
        raise CvappsError("tracking and counting need a detector (Faster R-CNN, YOLO or ultralytics) model")
    kind = "bytetrack" if track is True or (not track and lines) else track
    tracker = Tracker(str(kind), track_buffer) if kind else None
    # a lost track's side is kept as long as the tracker keeps the track (seconds: at the assumed rate)
    keep = int(tracker.buffer * (DEFAULT_FPS if tracker.buffer_in_seconds else 1)) if tracker else int(DEFAULT_BUFFER)
    counter = Counter(lines, polys, class_names, keep_frames=keep) if (lines or polys) else None
    return Analytics(tracker, counter)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_line(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 4 and all(_is_number(v) for v in value)


def _is_polygon(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) >= 3
            and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(v) for v in p) for p in value))


def _specs(value: Any, what: str, is_one: Any) -> list[str]:
    """Each line or zone of ``value`` as the CLI's comma-separated string. A bare string is one
    spec (iterating it would give characters), as is a single line or polygon not in a list."""
    if value is None:
        return []
    if hasattr(value, "tolist") and not isinstance(value, str):  # a numpy array
        value = value.tolist()
    if isinstance(value, str) or is_one(value):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise CvappsError(f"{what}: want a list of comma-separated strings or coordinates, got {shorten(value)}")
    specs = []
    for item in value:
        item = item.tolist() if hasattr(item, "tolist") else item
        if isinstance(item, str):
            specs.append(item)
        elif is_one(item):  # 4 numbers, or (x, y) points: flattened
            specs.append(",".join(str(v) for v in (item if _is_line(item) else [c for p in item for c in p])))
        else:
            raise CvappsError(f"{what}: each entry must be a comma-separated string or coordinates, got {shorten(item)}")
    return specs


class Analytics:
    """``analytics(frame, prediction) -> prediction``: its detections tracked, its ``counts`` set.

    tracker / counter: either may be None. Predictions without detections pass through.
    """

    def __init__(self, tracker: Tracker | None = None, counter: Counter | None = None) -> None:
        self.tracker, self.counter = tracker, counter
        self.seconds = 0.0

    def __call__(self, frame: Frame, prediction: Prediction) -> Prediction:
        if prediction.detections is None:
            return prediction
        t0 = time.perf_counter()
        if self.tracker is not None:
            prediction.detections = self.tracker.update(frame, prediction.detections)
        if self.counter is not None:
            prediction.counts = self.counter.update(frame, prediction.detections)
        prediction.detections.data.pop(EMBEDDING, None)  # used up here: outputs stay as they were
        self.seconds += time.perf_counter() - t0
        return prediction

    def stream(self, pairs: Iterable[tuple[Frame, Any]]) -> Iterator[tuple[Frame, Any]]:
        for frame, prediction in pairs:
            yield frame, self(frame, prediction)


class AnalyticsPredictor:
    """A Predictor whose ``predict`` output goes through :class:`Analytics`; every other attribute is
    the wrapped predictor's. Time spent tracking and counting is added to the ``postprocess`` timing."""

    def __init__(self, predictor: Any, analytics: Analytics) -> None:
        self.predictor, self.analytics = predictor, analytics
        if analytics.tracker is not None and analytics.tracker.kind == "ocsort":  # the tracker that reads appearance
            attach_embeddings(predictor)

    @property
    def timings(self) -> dict[str, float]:
        timings = dict(self.predictor.timings)
        timings["postprocess"] = timings.get("postprocess", 0.0) + self.analytics.seconds
        return timings

    def predict(self, frames: Iterable[Frame], **options: Any) -> Iterator[tuple[Frame, Any]]:
        return self.analytics.stream(self.predictor.predict(frames, **options))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)
