"""Line crossings that survive id changes: one count per physical object, and a log of crossing events.

supervision's ``LineZone`` forgets a track's side once it is missing for two frames, and a tracker
that loses an object in an occlusion gives it a new id when it reappears: either way an object that
crosses the line while hidden, or comes back under a new id on the other side, is never counted.
Here:

* a track's last side is kept as long as the track buffer (``keep_frames``), so an object hidden
  while it crosses is counted when it reappears with its id;
* a **new** track id that appears near where a recently lost track was last seen (centre within
  one box diagonal, growing by one per 10 frames of gap; with embeddings also a cosine distance
  <= :data:`ALIAS_COSINE`) is taken as the same object: it inherits the lost track's side, so the
  crossing is counted once, never twice. Only tracks absent from the current frame are candidates.

The side rule is the counter's: all four box corners on one side; ``in`` = from the positive side
of (B - A) x (P - A) to the negative (supervision's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALIAS_COSINE = 0.3  # largest cosine distance between a new track's box and a lost track's last box
MAX_REMEMBERED = 2048  # canonical tracks remembered per source before the oldest are forgotten


@dataclass
class _Seen:
    frame: int
    box: np.ndarray
    embedding: np.ndarray | None


class LineCounter:
    """Counts of one line in one source; the attributes :class:`~cvapps.analytics.counting.Counter`
    reads (``in_count``, ``out_count``, ``in_count_per_class``, ``out_count_per_class``)."""

    def __init__(self, line: Sequence[float]) -> None:
        self.a, self.b = np.array(line[:2], float), np.array(line[2:], float)
        self.sides: dict[int, bool] = {}
        self.in_count = self.out_count = 0
        self.in_count_per_class: dict[int, int] = {}
        self.out_count_per_class: dict[int, int] = {}

    def side(self, box: np.ndarray) -> bool | None:
        (ax, ay), (bx, by) = self.a, self.b
        corners = ((box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3]))
        cross = [(bx - ax) * (py - ay) - (by - ay) * (px - ax) for px, py in corners]
        return True if all(c > 0 for c in cross) else False if all(c < 0 for c in cross) else None

    def trigger(self, boxes: np.ndarray, labels: np.ndarray, ids: Sequence[int]) -> list[str | None]:
        """Per box: ``"in"``, ``"out"`` or None; ``ids`` are the canonical (alias-resolved) track ids."""
        out: list[str | None] = []
        for box, label, tid in zip(boxes, labels.tolist(), ids):
            side, before = self.side(box), self.sides.get(tid)
            out.append(None)
            if side is None:
                continue
            if before is not None and before != side:
                direction = "in" if before else "out"
                per_class = self.in_count_per_class if before else self.out_count_per_class
                per_class[label] = per_class.get(label, 0) + 1
                if before:
                    self.in_count += 1
                else:
                    self.out_count += 1
                out[-1] = direction
            self.sides[tid] = side
        return out


@dataclass
class Identities:
    """Track id -> canonical id of one source (see the module doc)."""

    keep_frames: int = 30
    alias: dict[int, int] = field(default_factory=dict)
    seen: dict[int, _Seen] = field(default_factory=dict)  # canonical id -> where it was last

    def resolve(self, frame: int, boxes: np.ndarray, ids: Sequence[int], embeddings: Any = None) -> list[int]:
        present = {self.alias[i] for i in ids if i in self.alias}
        out = []
        for k, tid in enumerate(ids):
            if tid not in self.alias:
                emb = None if embeddings is None else embeddings[k]
                self.alias[tid] = self._lost_match(frame, boxes[k], emb, present) or tid
                present.add(self.alias[tid])
            canon = self.alias[tid]
            self.seen[canon] = _Seen(frame, boxes[k].copy(), None if embeddings is None else embeddings[k])
            out.append(canon)
        if len(self.seen) > MAX_REMEMBERED:  # endless streams: forget the longest-gone
            for canon in sorted(self.seen, key=lambda c: self.seen[c].frame)[:len(self.seen) - MAX_REMEMBERED]:
                del self.seen[canon]
            self.alias = {t: c for t, c in self.alias.items() if c in self.seen}
        return out

    def _lost_match(self, frame: int, box: np.ndarray, emb: np.ndarray | None, present: set[int]) -> int | None:
        best, best_d = None, np.inf
        centre = (box[:2] + box[2:]) / 2
        for canon, s in self.seen.items():
            gap = frame - s.frame
            if canon in present or gap <= 0 or gap > self.keep_frames:
                continue
            diag = float(np.hypot(*(s.box[2:] - s.box[:2])))
            d = float(np.hypot(*(centre - (s.box[:2] + s.box[2:]) / 2)))
            if d > diag * (1 + gap / 10):
                continue
            if emb is not None and s.embedding is not None and 1 - float(emb @ s.embedding) > ALIAS_COSINE:
                continue
            if d < best_d:
                best, best_d = canon, d
        return best
