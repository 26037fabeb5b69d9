"""The windows large images are cut into: slices at inference (:mod:`cvapps.engine.slicing`) and
tiles in training (:mod:`cvapps.data.tiles`) share this one geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One slice: pixels [y0:y1, x0:x1] of its frame; ``near``: how far into it (px) each side's
    neighbour reaches (left, top, right, bottom; 0 at the frame's edge or for the whole frame)."""

    x0: int
    y0: int
    x1: int
    y1: int
    near: tuple[int, int, int, int] = (0, 0, 0, 0)


def _starts(length: int, size: int, overlap: float) -> list[int]:
    """Window starts along one axis: the fewest windows that overlap by at least ``size * overlap``,
    spread evenly from the start to the end (the first and last flush with the edges)."""
    if length <= size:
        return [0]
    step = max(1.0, size * (1 - overlap))
    n = math.ceil((length - size) / step) + 1
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def slice_windows(height: int, width: int, size: int, overlap: float, full: bool = False) -> list[Window]:
    """The windows of a ``height`` x ``width`` frame, row by row (plus the whole frame when ``full``
    and the frame is larger than one slice)."""
    xs, ys = _starts(width, size, overlap), _starts(height, size, overlap)
    sw, sh = min(size, width), min(size, height)
    out = []
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            near = (xs[i - 1] + sw - x if i else 0, ys[j - 1] + sh - y if j else 0,
                    x + sw - xs[i + 1] if i + 1 < len(xs) else 0, y + sh - ys[j + 1] if j + 1 < len(ys) else 0)
            out.append(Window(x, y, x + sw, y + sh, near))
    if full and len(out) > 1:
        out.append(Window(0, 0, width, height))
    return out
