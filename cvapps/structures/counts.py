"""Line totals and zone occupancy of one frame (what counting adds to a prediction)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LineCount:
    """Totals of one counting line so far (for one source): ``points`` (x1, y1, x2, y2) in pixels;
    ``in_count`` / ``out_count`` tracks that crossed it (in: from the right of the direction
    (x1, y1) -> (x2, y2) to its left, as supervision's LineZone); ``classes``: name -> {"in", "out"}."""

    points: tuple[float, float, float, float]
    in_count: int = 0
    out_count: int = 0
    classes: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"line": [round(float(v), 2) for v in self.points], "in": self.in_count, "out": self.out_count,
                "classes": {k: dict(v) for k, v in self.classes.items()}}


@dataclass
class ZoneCount:
    """Occupancy of one polygon zone in one frame: ``polygon`` [(x, y), ...] in pixels, ``count``
    objects whose box's bottom centre is inside, ``classes``: name -> count."""

    polygon: list[tuple[float, float]]
    count: int = 0
    classes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"zone": [[round(float(x), 2), round(float(y), 2)] for x, y in self.polygon], "count": self.count,
                "classes": dict(self.classes)}


@dataclass
class Counts:
    """The line totals and zone occupancies of one frame's source, in the order they were given."""

    lines: list[LineCount] = field(default_factory=list)
    zones: list[ZoneCount] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"lines": [c.to_json() for c in self.lines], "zones": [z.to_json() for z in self.zones]}
