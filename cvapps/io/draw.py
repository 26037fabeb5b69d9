"""Drawing any prediction on an image (OpenCV): boxes with class names and scores in a fixed palette,
mask overlays (:mod:`cvapps.io.overlay`) and a class label; used by every annotated output.

Tracked detections are labelled ``#id name score`` in a colour per track id, with a short trail of
the track's recent box centres (:class:`Trails`, kept by the drawer :func:`make_drawer` returns);
counting lines are drawn with their ``in``/``out`` totals and zones with their occupancy.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from cvapps.formats.masks import IGNORE_INDEX
from cvapps.io.overlay import overlay_mask
from cvapps.structures import Counts, Detections, Prediction
from cvapps.structures.prediction import class_name

Draw = Callable[[np.ndarray, Any], np.ndarray]

# A fixed palette (BGR) so a class keeps its colour across images, runs and models.
PALETTE: list[tuple[int, int, int]] = [
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
    (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
    (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
    (200, 149, 255), (199, 55, 255),
]
MASK_ALPHA = 0.5  # weight of the class colour where an instance mask is drawn
TRAIL = 30  # box centres kept per track for its trail
DRAW_ORDER = ("semantic", "detections", "classification", "presence")  # prediction parts, bottom to top


def color(label: int) -> tuple[int, int, int]:
    return PALETTE[int(label) % len(PALETTE)]


def draw_detections(image_bgr: np.ndarray, det: Detections, class_names: Sequence[str],
                    thickness: int | None = None, trails: dict[int, Sequence[tuple[float, float]]] | None = None,
                    counts: Counts | None = None) -> np.ndarray:
    """A copy of ``image_bgr`` (H, W, 3 uint8) with each box (xyxy original pixels) outlined and
    labelled ``name score`` (``#id name score`` in the track's colour when ``det.track_ids`` is
    set); the label sits above the box, or inside it at the top edge. Instance masks
    (``det.masks`` (N, H, W) bool, original pixels) are blended at 50 % in the class colour under
    the boxes. trails: track id -> recent box centres, drawn as a fading polyline;
    counts: the frame's lines and zones with their counts (:func:`draw_counts`)."""
    out = np.ascontiguousarray(image_bgr.copy())
    h, w = out.shape[:2]
    if det.masks is not None and det.masks.shape[1:] == (h, w):
        for mask, label in zip(det.masks.numpy(), det.labels.tolist()):
            out[mask] = (out[mask] * (1 - MASK_ALPHA) + np.array(color(label)) * MASK_ALPHA).astype(np.uint8)
    t = thickness or max(1, round(0.002 * (h + w)))
    scale = max(0.35, t / 3)
    ids = det.track_ids.tolist() if det.track_ids is not None else [None] * len(det)
    if counts is not None:
        draw_counts(out, counts, t)
    for tid in ids:
        points = (trails or {}).get(tid) if tid is not None else None
        if points is not None and len(points) > 1:
            pts = np.round(np.asarray(points)).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [pts], False, color(tid), max(1, t - 1), cv2.LINE_AA)
    for (x1, y1, x2, y2), score, label, tid in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), ids):
        c = color(label if tid is None else tid)
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, c, t, cv2.LINE_AA)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = f"{name} {score:.2f}" if tid is None else f"#{tid} {name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, t - 1))
        above = p1[1] - th - base >= 0
        top = p1[1] - th - base if above else p1[1]
        cv2.rectangle(out, (p1[0], top), (min(w - 1, p1[0] + tw), top + th + base), c, -1, cv2.LINE_AA)
        cv2.putText(out, text, (p1[0], top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    max(1, t - 1), cv2.LINE_AA)
    return out


def draw_counts(image: np.ndarray, counts: Counts, thickness: int = 2) -> None:
    """Draw (in place) each zone's polygon with its occupancy and each line with ``in N out M``."""
    for k, zone in enumerate(counts.zones):
        pts = np.round(np.asarray(zone.polygon)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(image, [pts], True, color(k + 7), thickness, cv2.LINE_AA)
        x, y = pts.reshape(-1, 2).min(0)
        _label(image, f"zone {k + 1}: {zone.count}", int(x) + 2, int(y) + 2 + 16, color(k + 7))
    for k, line in enumerate(counts.lines):
        x1, y1, x2, y2 = (int(round(v)) for v in line.points)
        cv2.line(image, (x1, y1), (x2, y2), (255, 255, 255), thickness + 2, cv2.LINE_AA)
        cv2.line(image, (x1, y1), (x2, y2), color(k + 2), thickness, cv2.LINE_AA)
        _label(image, f"line {k + 1}: in {line.in_count} out {line.out_count}", 4, 20 + 22 * k, color(k + 2))


class Trails:
    """Recent box centres per track id (ids are unique over a run, whatever the source), for trails.

    ``update(det)`` adds a frame's centres once (a frame drawn by several sinks counts once; frames a
    preview skips leave a straight segment) and returns ``{track id: [(x, y), ...]}``; the least
    recently seen tracks are forgotten beyond ``tracks``, so endless runs stay flat.
    """

    def __init__(self, length: int = TRAIL, tracks: int = 512) -> None:
        self.length, self.max_tracks = length, tracks
        self._tracks: OrderedDict[int, deque] = OrderedDict()
        self._last: Any = None  # the Detections drawn last: several sinks draw the same frame

    def update(self, det: Detections) -> dict[int, deque]:
        if det.track_ids is not None and det is not self._last:
            self._last = det
            centres = ((det.boxes[:, :2] + det.boxes[:, 2:]) / 2).tolist()
            for tid, centre in zip(det.track_ids.tolist(), centres):
                trail = self._tracks.pop(tid, None) or deque(maxlen=self.length)
                trail.append(tuple(centre))
                self._tracks[tid] = trail  # most recent last
            while len(self._tracks) > self.max_tracks:
                self._tracks.popitem(last=False)
        return self._tracks


def _label(image: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> None:
    scale = max(0.4, min(image.shape[:2]) / 600)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    y = max(th + base, y)
    cv2.rectangle(image, (x, y - th - base), (x + tw, y), colour, -1)
    cv2.putText(image, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def draw_prediction(image: np.ndarray, prediction: Prediction, class_names: Sequence[str],
                    trails: dict[int, Sequence[tuple[float, float]]] | None = None) -> np.ndarray:
    """A copy of ``image`` (HxWx3 BGR uint8) with each part of ``prediction`` drawn on it, in one
    pass over the parts: the class mask (blended at 50 % with a legend, :func:`cvapps.io.overlay.overlay_mask`;
    mask value -> name by :meth:`~cvapps.structures.SegmentationMask.names_for`), then the boxes on top
    ("name score", with the frame's counts, :func:`draw_detections`), then the classification's
    "name score" top left and the classes found present bottom left."""
    steps: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {
        "semantic": lambda out, seg: overlay_mask(out, np.where(seg.mask == IGNORE_INDEX, 0, seg.mask).astype(np.uint8),
                                                  class_names=seg.names_for(class_names)),
        "detections": lambda out, det: draw_detections(out, det, class_names, trails=trails, counts=prediction.counts),
        "classification": lambda out, c: _labelled(out, f"{class_name(class_names, c.label)} {c.score:.2f}", 4, 4,
                                                   color(c.label)),
        "presence": lambda out, p: _labelled(out, " ".join(class_name(class_names, k) for k in p.labels.tolist()),
                                             4, out.shape[0] - 4, (255, 255, 255)) if len(p.labels) else out,
    }
    out = image
    for name in DRAW_ORDER:  # masks under boxes under text
        part = getattr(prediction, name)
        if part is not None:
            out = steps[name](out, part)
    return image.copy() if out is image else out


def _labelled(image: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> np.ndarray:
    """A copy of ``image`` with ``text`` on a ``colour`` box at (x, y) (:func:`_label`)."""
    out = image.copy()
    _label(out, text, x, y, colour)
    return out


class Drawer:
    """``draw(image, prediction) -> image`` for the given class names (see :func:`draw_prediction`);
    tracked detections also get their trails (:class:`Trails`, kept by this drawer)."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.names = list(class_names)
        self.trails = Trails()

    def __call__(self, image: np.ndarray, prediction: Prediction) -> np.ndarray:
        trails = None
        if prediction.detections is not None and prediction.detections.track_ids is not None:
            trails = self.trails.update(prediction.detections)
        return draw_prediction(image, prediction, self.names, trails)


def make_drawer(class_names: Sequence[str]) -> Draw:
    """A :class:`Drawer` for the given class names."""
    return Drawer(class_names)
