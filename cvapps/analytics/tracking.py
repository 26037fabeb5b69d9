"""Multi-object tracking on any detector's output (Faster R-CNN, YOLO, native ultralytics).

The trackers are ultralytics' ``BYTETracker`` / ``BOTSORT`` with their default tracker YAML
(``bytetrack.yaml``, ``botsort.yaml``) and cvapps' ``ocsort`` (:mod:`.ocsort`: OC-SORT's re-update
after a gap, plus appearance from ``Detections.data["embedding"]`` when the detector gives it); cvapps only feeds them :class:`~cvapps.structures.Detections`
and keeps **one tracker per source** (:func:`source_key`: the video or stream a frame comes from, or
the folder of a still image), so a run that interleaves the frames of several cameras never mixes
their identities.

The trackers match boxes whatever their class, so a second box of another class on the same object
(which class-wise NMS keeps) would start a second track: before tracking, a box overlapping a
higher-scoring box by IoU > ``DEDUPE_IOU`` is dropped (class-agnostic NMS).
Only boxes that belong to a confirmed track are kept (as ``model.track`` does in ultralytics); their
boxes, scores, labels and masks are the detector's, and ``track_ids`` (1, 2, ... in order of first
appearance) are unique over the whole run, across sources.

The track buffer (``--track-buffer``: ``30`` = frames, ``2s`` = seconds) is how long a lost track is
kept (default: ``DEFAULT_BUFFERS``, 30 frames as ultralytics' YAML for bytetrack / botsort; 3 s for
ocsort, whose observation-centric and appearance matching can take an object back after it was hidden
or out of the frame that long): a track unseen for that long ends, and a source whose frames stop for longer than it (a stream
outage: its timestamps jump) starts afresh with new ids; a shorter outage keeps every id.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvapps import ultralytics_parts  # cheap: parts load on first use
from cvapps.analytics.ocsort import OcSortTracker
from cvapps.errors import CvappsError
from cvapps.nms import agnostic_nms
from cvapps.structures import Detections, Frame

TRACKERS = ("bytetrack", "botsort", "ocsort")
EMBEDDING = "embedding"  # the Detections.data key of per-box appearance embeddings (analytics/embed.py)
DEFAULT_BUFFER = "30"  # frames, ultralytics' default track_buffer
DEFAULT_BUFFERS = {"bytetrack": DEFAULT_BUFFER, "botsort": DEFAULT_BUFFER, "ocsort": "3s"}  # see the module doc
DEFAULT_FPS = 30.0  # frame rate assumed until a source's timestamps tell
PRUNE_IDS = 1024  # tracker ids remembered per source before ended ones are forgotten
DEDUPE_IOU = 0.7  # class-agnostic NMS before tracking (see the module doc)


def source_key(frame: Frame) -> str:
    """The sequence a frame belongs to: a video or stream frame its ``stream`` (``"cam.mp4"``, a URL
    whole); a still image its folder (a folder of frames is one sequence, as MOT's ``img1/``)."""
    if frame.is_video or "://" in frame.stream:
        return frame.stream
    return str(Path(frame.stream).parent)


def parse_track_buffer(spec: str | float) -> tuple[float, bool]:
    """``"30"`` / ``30`` -> (30, False) frames; ``"2s"`` / ``"2.5s"`` -> (2.5, True) seconds."""
    text = str(spec).strip().lower()
    seconds = text.endswith("s")
    try:
        value = float(text[:-1] if seconds else text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0 or (not seconds and value != int(value)):
        raise CvappsError(f"--track-buffer: want a number of frames (30) or seconds (2s), got {spec!r}")
    return value, seconds


def _tracker_classes() -> dict[str, Any]:
    """ultralytics' tracker classes; imported lazily because ultralytics' matching needs ``lap``
    (the ``tracking`` extra) and would otherwise try to pip-install it at import."""
    try:
        import lap  # noqa: F401
    except ImportError:
        raise CvappsError('--track needs the lap package: pip install "cvapps[tracking]"') from None
    return {"bytetrack": ultralytics_parts.BYTETracker, "botsort": ultralytics_parts.BOTSORT,  # loaded here
            "ocsort": lambda _args: OcSortTracker()}


def tracker_args(kind: str) -> Any:
    """The default tracker YAML shipped with ultralytics (``bytetrack.yaml`` / ``botsort.yaml``); ocsort: none."""
    if kind == "ocsort":
        return None
    parts = ultralytics_parts
    return parts.IterableSimpleNamespace(**parts.YAML.load(parts.check_yaml(f"{kind}.yaml")))


class _Boxes:
    """The detections as ultralytics' trackers read them: numpy ``conf``, ``cls``, ``xywh`` (centre
    x, y, width, height) with boolean indexing."""

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray) -> None:
        self.xyxy, self.conf, self.cls = xyxy, conf, cls

    @property
    def xywh(self) -> np.ndarray:
        xy = (self.xyxy[:, :2] + self.xyxy[:, 2:]) / 2
        return np.concatenate([xy, self.xyxy[:, 2:] - self.xyxy[:, :2]], 1)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, keep: Any) -> _Boxes:
        return _Boxes(self.xyxy[keep], self.conf[keep], self.cls[keep])


@dataclass
class _SourceState:
    tracker: Any
    last_ts: float
    ids: dict[int, int] = field(default_factory=dict)  # the tracker's ids -> the run's ids
    interval: float = 1.0 / DEFAULT_FPS  # running estimate of the time between frames
    steps: int = 0  # frame-to-frame intervals seen


class Tracker:
    """``update(frame, detections) -> detections`` with ``track_ids``, one tracker per source.

    kind: ``bytetrack``, ``botsort`` or ``ocsort``; track_buffer: frames (``30``) or seconds (``"2s"``) a
    lost track is kept, also the longest outage of a source that keeps its ids (None: the tracker's
    ``DEFAULT_BUFFERS`` entry).
    """

    def __init__(self, kind: str = "bytetrack", track_buffer: str | float | None = None) -> None:
        kind = str(kind).lower()
        if kind not in TRACKERS:
            raise CvappsError(f"--track: unknown tracker {kind!r} (choose from {', '.join(TRACKERS)})")
        self.kind = kind
        self.buffer, self.buffer_in_seconds = parse_track_buffer(DEFAULT_BUFFERS[kind] if track_buffer is None
                                                                 else track_buffer)
        self._classes = _tracker_classes()
        self.args = tracker_args(kind)
        self.states: dict[str, _SourceState] = {}
        self.restarts = 0  # sources restarted after an outage longer than the buffer
        self.tracks = 0  # track ids handed out
        self.seconds = 0.0  # time spent tracking

    def _frames_lost(self, state: _SourceState) -> int:
        return max(1, round(self.buffer / state.interval)) if self.buffer_in_seconds else int(self.buffer)

    def _gap_s(self, state: _SourceState) -> float:
        return self.buffer if self.buffer_in_seconds else self.buffer * state.interval

    def _new_tracker(self) -> Any:
        return self._classes[self.kind](self.args)

    def _state(self, frame: Frame) -> _SourceState:
        key = source_key(frame)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = _SourceState(self._new_tracker(), frame.timestamp)
            return state
        dt = frame.timestamp - state.last_ts
        if state.steps and dt > self._gap_s(state):  # an outage longer than the buffer: every track is gone
            state.tracker, state.ids = self._new_tracker(), {}
            self.restarts += 1
        elif dt > 0:  # smoothed frame interval (outages excluded), so seconds <-> frames follow the source
            state.interval = dt if not state.steps else 0.9 * state.interval + 0.1 * dt
            state.steps += 1
        state.last_ts = frame.timestamp
        state.tracker.max_frames_lost = self._frames_lost(state)
        return state

    def _run_id(self, state: _SourceState, tracker_id: int) -> int:
        if tracker_id not in state.ids:
            self.tracks += 1
            state.ids[tracker_id] = self.tracks
        return state.ids[tracker_id]

    def update(self, frame: Frame, det: Detections) -> Detections:
        """Track one frame's detections (frames of a source in order); returns the tracked boxes only."""
        t0 = time.perf_counter()
        state = self._state(frame)
        # class-agnostic: one box per object
        kept = agnostic_nms(det.boxes, det.scores, DEDUPE_IOU).numpy() if len(det) > 1 else np.arange(len(det))
        boxes = _Boxes(det.boxes.numpy()[kept].astype(np.float32), det.scores.numpy()[kept].astype(np.float32),
                       det.labels.numpy()[kept].astype(np.float32))
        if self.kind == "ocsort":  # the one tracker that reads appearance
            emb = det.data.get(EMBEDDING)
            tracks = state.tracker.update(boxes, frame.image, None if emb is None else emb[kept].astype(np.float64))
        else:
            tracks = state.tracker.update(boxes, frame.image)  # rows [x1, y1, x2, y2, id, score, cls, idx]
        if len(tracks):
            idx = torch.as_tensor(kept[tracks[:, -1].astype(np.int64)])
            ids = np.array([self._run_id(state, int(t)) for t in tracks[:, 4]], dtype=np.int64)
        else:
            idx, ids = torch.zeros(0, dtype=torch.int64), np.zeros(0, np.int64)
        if len(state.ids) > PRUNE_IDS:  # forget ended tracks, so endless streams keep memory flat
            alive = {t.track_id for t in (*state.tracker.tracked_stracks, *state.tracker.lost_stracks)}
            state.ids = {k: v for k, v in state.ids.items() if k in alive}
        out = det[idx]
        out.track_ids = ids
        self.seconds += time.perf_counter() - t0
        return out
