"""Line totals and zone occupancy of one frame (what counting adds to a prediction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _round(v: Any, ndigits: int | None) -> float:
    return float(v) if ndigits is None else round(float(v), ndigits)


@dataclass
class LineCount:
    """Totals of one counting line so far (for one source): ``points`` (x1, y1, x2, y2) in pixels;
    ``in_count`` / ``out_count`` tracks that crossed it (in: from the right of the direction
    (x1, y1) -> (x2, y2) to its left, as supervision's LineZone); ``classes``: name -> {"in", "out"}."""

    points: tuple[float, float, float, float]
    in_count: int = 0
    out_count: int = 0
    classes: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self, ndigits: int | None = 2) -> dict:
        """``{"line", "in", "out", "classes"}``; ``ndigits=None`` keeps the points unrounded (lossless)."""
        return {"line": [_round(v, ndigits) for v in self.points], "in": self.in_count, "out": self.out_count,
                "classes": {k: dict(v) for k, v in self.classes.items()}}

    @classmethod
    def from_json(cls, d: dict) -> LineCount:
        return cls(tuple(float(v) for v in d["line"]), int(d["in"]), int(d["out"]),  # type: ignore[arg-type]
                   {k: {"in": int(v["in"]), "out": int(v["out"])} for k, v in d["classes"].items()})


@dataclass
class ZoneCount:
    """Occupancy of one polygon zone in one frame: ``polygon`` [(x, y), ...] in pixels, ``count``
    objects whose box's bottom centre is inside, ``classes``: name -> count."""

    polygon: list[tuple[float, float]]
    count: int = 0
    classes: dict[str, int] = field(default_factory=dict)

    def to_json(self, ndigits: int | None = 2) -> dict:
        """``{"zone", "count", "classes"}``; ``ndigits=None`` keeps the polygon unrounded (lossless)."""
        return {"zone": [[_round(x, ndigits), _round(y, ndigits)] for x, y in self.polygon], "count": self.count,
                "classes": dict(self.classes)}

    @classmethod
    def from_json(cls, d: dict) -> ZoneCount:
        return cls([(float(x), float(y)) for x, y in d["zone"]], int(d["count"]),
                   {k: int(v) for k, v in d["classes"].items()})


@dataclass
class Counts:
    """The line totals and zone occupancies of one frame's source, in the order they were given."""

    lines: list[LineCount] = field(default_factory=list)
    zones: list[ZoneCount] = field(default_factory=list)

    def to_json(self, ndigits: int | None = 2) -> dict:
        """``{"lines": [...], "zones": [...]}``: rounded to ``ndigits`` as ``counts.json`` and the
        preview show it; a prediction's JSON form (:mod:`cvapps.structures.prediction`) passes None."""
        return {"lines": [c.to_json(ndigits) for c in self.lines], "zones": [z.to_json(ndigits) for z in self.zones]}

    @classmethod
    def from_json(cls, d: dict) -> Counts:
        """The inverse of ``to_json(None)``."""
        return cls([LineCount.from_json(c) for c in d["lines"]], [ZoneCount.from_json(z) for z in d["zones"]])
