"""MOT Challenge text files (https://motchallenge.net, MOT16/17/20 ``gt/gt.txt`` and tracker results).

One object per line, comma-separated, frames numbered from 1, boxes in pixels::

    frame, id, bb_left, bb_top, bb_width, bb_height, conf, class, visibility

Ground truth (``gt.txt``): ``conf`` 1 (0 = ignore this box), ``class`` the object's class id,
``visibility`` the visible fraction in [0, 1]. Tracker results: ``conf`` the score and
``class`` / ``visibility`` -1 (MOT's ``x, y, z`` world coordinates are not written). motmetrics
(``mm.io.loadtxt(path, fmt="mot15-2D")``), TrackEval and CVAT's "MOT 1.1" import read these files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cvapps.errors import DataError
from cvapps.io.safe_write import write_bytes


@dataclass
class MotRow:
    """One box: ``frame`` (1-based), ``id`` (>= 1), ``box`` [x, y, w, h] pixels, ``conf``, ``cls``, ``visibility``."""

    frame: int
    id: int
    box: tuple[float, float, float, float]
    conf: float = 1.0
    cls: int = -1
    visibility: float = -1.0

    def line(self) -> str:
        x, y, w, h = (f"{v:.2f}".rstrip("0").rstrip(".") for v in self.box)
        vis = "-1" if self.visibility < 0 else f"{self.visibility:.3f}".rstrip("0").rstrip(".")
        conf = f"{self.conf:.4f}".rstrip("0").rstrip(".") if self.conf not in (0, 1) else str(int(self.conf))
        return f"{self.frame},{self.id},{x},{y},{w},{h},{conf},{self.cls},{vis}\n"


def write_mot(path: str | Path, rows: Iterable[MotRow]) -> Path:
    """Write ``rows`` sorted by (frame, id) to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    write_bytes(path, "".join(r.line() for r in sorted(rows, key=lambda r: (r.frame, r.id))))
    return path


def read_mot(path: str | Path) -> list[MotRow]:
    """Rows of a MOT file (6 to 10 columns; missing ``conf``/``class``/``visibility`` read as 1/-1/-1).
    A malformed line is a one-line DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) < 6:
                raise ValueError
            v = [float(p) for p in parts[:9]]
            frame, tid = int(v[0]), int(v[1])
            if frame < 1 or v[0] != frame or v[1] != tid:
                raise ValueError
        except ValueError:
            raise DataError(f"{path}:{n}: not a MOT line (frame,id,x,y,w,h[,conf,class,visibility]): "
                            f"{line[:80]!r}") from None
        rows.append(MotRow(frame, tid, (v[2], v[3], v[4], v[5]), v[6] if len(v) > 6 else 1.0,
                           int(v[7]) if len(v) > 7 else -1, v[8] if len(v) > 8 else -1.0))
    return rows
