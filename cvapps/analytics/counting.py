"""Line crossings and zone occupancy on tracked detections, with supervision's ``LineZone`` and
``PolygonZone`` (the optional ``supervision`` extra), one set of zones per source.

* a line ``x1,y1,x2,y2`` (pixels) counts each track once per crossing: ``in`` when it goes from the
  right of the direction (x1, y1) -> (x2, y2) to its left, ``out`` the other way; a crossing
  counts when all four box corners have moved to the other side (supervision's default anchors),
  so a box that only touches the line is not counted. Needs track ids (``--track``). Counted by
  :mod:`.lines`, which keeps a hidden track's side for the track buffer and lets a re-born id
  inherit a lost track's side, so one object is counted once through an occlusion; every crossing
  is also logged as an event (``events`` in ``counts.json``).
* a zone ``x1,y1,x2,y2,x3,y3,...`` (pixels, 3 or more points) counts, per frame, the boxes whose
  bottom centre lies inside the polygon. supervision rasterises a zone into a mask as large as its
  furthest corner, so each source's zones are clipped to its frame first (the part outside the
  frame can hold no box): ``0,0,100000,0,100000,100000`` costs a frame-sized mask, not 9 GiB.

Coordinates must be finite and within +-1e6 px (:data:`MAX_COORD`); anything else is a one-line error.

``Counter.update(frame, detections)`` returns that frame's :class:`~cvapps.structures.Counts`
(line totals so far, zone occupancy now); :class:`CountsFile` writes the run's totals to
``counts.json`` atomically::

    {"lines": [{"line": [x1, y1, x2, y2], "in": 3, "out": 1, "classes": {"car": {"in": 2, "out": 1}, ...}}],
     "zones": [{"zone": [[x, y], ...], "max": 4, "classes": {"car": 3}}],       # peak occupancy
     "sources": {"cam.mp4": {"lines": [...], "zones": [...]}},                  # the same per source
     "events": [{"source": "cam.mp4", "line": 0, "track_id": 7, "frame": 41, "time": 1.64,
                 "direction": "in", "class": "car"}]}                             # every crossing
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvapps.analytics.lines import Identities, LineCounter
from cvapps.analytics.tracking import EMBEDDING, source_key
from cvapps.errors import CvappsError, shorten
from cvapps.io.sinks.base import StagedSink
from cvapps.structures import Counts, Detections, Frame, LineCount, ZoneCount

INSTALL = 'pip install "cvapps[supervision]"'


#: Largest coordinate magnitude accepted (pixels). No frame is a million pixels wide; beyond that a
#: value is a typo or an attack (1e308 overflows supervision's line geometry).
MAX_COORD = 1e6
MAX_EVENTS = 100_000  # crossing events kept for counts.json (an endless stream keeps its first ones)


def _numbers(spec: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in str(spec).replace(" ", "").split(",") if v != ""]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise CvappsError(f"{what}: want comma-separated pixel coordinates, got {shorten(spec)}")
    if any(abs(v) > MAX_COORD for v in values):
        raise CvappsError(f"{what}: coordinates must be within +-{MAX_COORD:.0e} pixels, got {shorten(spec)}")
    return values


def parse_line(spec: str) -> tuple[float, float, float, float]:
    """``"10,120,310,120"`` -> (x1, y1, x2, y2); the two ends must differ."""
    v = _numbers(spec, "--count-line")
    if len(v) != 4 or (v[0], v[1]) == (v[2], v[3]):
        raise CvappsError(f"--count-line: want x1,y1,x2,y2 with two different ends, got {shorten(spec)}")
    return v[0], v[1], v[2], v[3]


def parse_zone(spec: str) -> list[tuple[float, float]]:
    """``"0,0,100,0,100,80"`` -> [(0, 0), (100, 0), (100, 80)]: 3 or more (x, y) points."""
    v = _numbers(spec, "--zone")
    if len(v) < 6 or len(v) % 2:
        raise CvappsError(f"--zone: want x1,y1,x2,y2,x3,y3[,...] (3 or more points), got {shorten(spec)}")
    return list(zip(v[0::2], v[1::2]))


def supervision() -> Any:
    """The supervision module, or a one-line CvappsError naming the extra to install."""
    try:
        import supervision as sv  # lazily: an optional extra
    except ImportError:
        raise CvappsError(f"--count-line/--zone need the supervision package: {INSTALL}") from None
    return sv


def clip_polygon(points: Sequence[tuple[float, float]], width: float, height: float) -> list[tuple[float, float]]:
    """``points`` clipped to the rectangle [0, width] x [0, height] (Sutherland-Hodgman): the same
    inside for every point of the frame; fewer than 3 points when the polygon misses the frame."""
    out = [(float(x), float(y)) for x, y in points]
    # each edge: (inside test, intersection of segment p-q with the edge's line)
    edges = ((lambda p: p[0] >= 0, 0, 0.0), (lambda p: p[0] <= width, 0, float(width)),
             (lambda p: p[1] >= 0, 1, 0.0), (lambda p: p[1] <= height, 1, float(height)))
    for inside, axis, at in edges:
        src, out = out, []
        for i, q in enumerate(src):
            p = src[i - 1]
            if inside(q) != inside(p):
                t = (at - p[axis]) / (q[axis] - p[axis])
                cut = [p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])]
                cut[axis] = at
                out.append((cut[0], cut[1]))
            if inside(q):
                out.append(q)
    return out


class _SourceZones:
    """supervision zones of one source. Polygon zones are rebuilt for each new frame size (they
    hold no state between frames), clipped to the frame; lines keep their crossing state."""

    def __init__(self, sv: Any, lines: Sequence[tuple[float, ...]], zones: Sequence[list[tuple[float, float]]],
                 keep_frames: int = 30) -> None:
        self.sv, self.polygons = sv, list(zones)
        self.lines = [LineCounter(line) for line in lines]
        self.identities = Identities(keep_frames)
        self.size: tuple[int, int] | None = None
        self.zones: list[Any] = []
        self.zone_max = [0] * len(zones)
        self.zone_classes_max: list[dict[str, int]] = [{} for _ in zones]

    def zones_for(self, width: int, height: int) -> list[Any]:
        """The PolygonZones for frames of this size (None for a zone that misses the frame)."""
        if self.size != (width, height):
            self.size, self.zones = (width, height), []
            for polygon in self.polygons:
                clipped = np.round(np.asarray(clip_polygon(polygon, width, height))).astype(int).reshape(-1, 2)
                if len(np.unique(clipped, axis=0)) < 3:  # outside the frame (or a sliver on its edge)
                    self.zones.append(None)
                    continue
                self.zones.append(self.sv.PolygonZone(polygon=clipped,
                                                      triggering_anchors=(self.sv.Position.BOTTOM_CENTER,)))
        return self.zones


class Counter:
    """Per-source line counts and zone occupancy (see the module doc).

    lines: [(x1, y1, x2, y2)]; zones: [[(x, y), ...]]; class_names: index -> name for per-class counts.
    """

    def __init__(self, lines: Sequence[tuple[float, float, float, float]] = (),
                 zones: Sequence[list[tuple[float, float]]] = (), class_names: Sequence[str] = (),
                 keep_frames: int = 30) -> None:
        self.sv = supervision()
        self.keep_frames = keep_frames  # frames a lost track's side is kept (the track buffer)
        self.events: list[dict[str, Any]] = []
        self.lines, self.zones = [tuple(line) for line in lines], [list(z) for z in zones]
        self.class_names = list(class_names)
        self.sources: dict[str, _SourceZones] = {}

    def _name(self, label: Any) -> str:
        i = -1 if label is None else int(label)
        return self.class_names[i] if 0 <= i < len(self.class_names) else str(label)

    def update(self, frame: Frame, det: Detections) -> Counts:
        """This frame's counts: each line's totals so far for the frame's source, each zone's occupancy now."""
        key = source_key(frame)
        zs = self.sources.get(key)
        if zs is None:
            zs = self.sources[key] = _SourceZones(self.sv, self.lines, self.zones, self.keep_frames)
        labels = det.labels.numpy().astype(int)
        sv_det = self.sv.Detections(xyxy=det.boxes.numpy().astype(np.float32).reshape(-1, 4),
                                    confidence=det.scores.numpy().astype(np.float32), class_id=labels,
                                    tracker_id=det.track_ids)
        counts = Counts()
        if det.track_ids is not None and len(det) and self.lines:
            boxes, ids = det.boxes.numpy().astype(np.float64).reshape(-1, 4), [int(i) for i in det.track_ids]
            canon = zs.identities.resolve(frame.frame_index, boxes, ids, det.data.get(EMBEDDING))
            for k, line in enumerate(zs.lines):
                for tid, label, direction in zip(ids, labels.tolist(), line.trigger(boxes, labels, canon)):
                    if direction and len(self.events) < MAX_EVENTS:
                        self.events.append({"source": key, "line": k, "track_id": tid, "frame": frame.frame_index,
                                            "time": round(float(frame.timestamp), 3), "direction": direction,
                                            "class": self._name(label)})
        for points, line in zip(self.lines, zs.lines):
            counts.lines.append(self._line_count(points, line))
        height, width = frame.image.shape[:2]
        for k, (polygon, zone) in enumerate(zip(self.zones, zs.zones_for(width, height))):
            inside = zone.trigger(sv_det) if len(det) and zone is not None else np.zeros(len(det), bool)
            classes: dict[str, int] = {}
            for label in labels[inside].tolist():
                classes[self._name(label)] = classes.get(self._name(label), 0) + 1
            counts.zones.append(ZoneCount(polygon, int(inside.sum()), classes))
            zs.zone_max[k] = max(zs.zone_max[k], int(inside.sum()))
            for name, n in classes.items():
                zs.zone_classes_max[k][name] = max(zs.zone_classes_max[k].get(name, 0), n)
        return counts

    def _line_count(self, points: tuple[float, ...], line: Any) -> LineCount:
        classes: dict[str, dict[str, int]] = {}
        for direction, per_class in (("in", line.in_count_per_class), ("out", line.out_count_per_class)):
            for label, n in per_class.items():
                classes.setdefault(self._name(label), {"in": 0, "out": 0})[direction] += int(n)
        return LineCount(tuple(points), int(line.in_count), int(line.out_count), classes)  # type: ignore[arg-type]

    def _source_totals(self, zs: _SourceZones) -> dict[str, Any]:
        return {"lines": [self._line_count(p, line).to_json() for p, line in zip(self.lines, zs.lines)],
                "zones": [{**ZoneCount(z).to_json(), "max": m, "classes": dict(c)}
                          for z, m, c in zip(self.zones, zs.zone_max, zs.zone_classes_max)]}

    def totals(self) -> dict[str, Any]:
        """The run's totals: per line ``in``/``out`` (and per class name) summed over sources, per zone
        the peak occupancy of any source; ``sources``: the same for each source."""
        per_source = {key: self._source_totals(zs) for key, zs in self.sources.items()}
        lines = [{**LineCount(tuple(p)).to_json(), "classes": {}} for p in self.lines]  # type: ignore[arg-type]
        zones = [{**ZoneCount(z).to_json(), "max": 0, "classes": {}} for z in self.zones]
        for totals in per_source.values():
            for total, line in zip(lines, totals["lines"]):
                total["in"] += line["in"]
                total["out"] += line["out"]
                for name, io in line["classes"].items():
                    c = total["classes"].setdefault(name, {"in": 0, "out": 0})
                    c["in"], c["out"] = c["in"] + io["in"], c["out"] + io["out"]
            for total, zone in zip(zones, totals["zones"]):
                total["max"] = max(total["max"], zone["max"])
                for name, n in zone["classes"].items():
                    total["classes"][name] = max(total["classes"].get(name, 0), n)
        for zone in zones:
            zone.pop("count", None)
        for totals in per_source.values():
            for zone in totals["zones"]:
                zone.pop("count", None)
        return {"lines": lines, "zones": zones, "sources": per_source, "events": list(self.events)}


class CountsFile(StagedSink):
    """Writes ``counter.totals()`` to ``path`` (``OUT/counts.json``) when the run's outputs are committed."""

    def __init__(self, path: str | Path, counter: Counter) -> None:
        super().__init__()
        self.path, self.counter = Path(path), counter

    def write(self, frame: Frame, prediction: Any) -> None:
        pass  # the counter has already counted this frame in the analytics stage

    @property
    def targets(self) -> list[Path]:
        return [self.path]

    def prepare(self) -> None:
        self.stage_text(self.path, json.dumps(self.counter.totals(), indent=1) + "\n")
