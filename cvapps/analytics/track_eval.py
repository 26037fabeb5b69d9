"""Score tracks against MOT ground truth: HOTA, IDF1, MOTA (``cvapps track-eval PRED GT``).

Both files are MOT Challenge text (:mod:`cvapps.formats.mot`): ``PRED`` as ``cvapps detect --track``
writes it (``OUT/tracks/<video>.txt``), ``GT`` as MOT's ``gt/gt.txt`` or the synthetic videos' ``gt.txt``.
The metrics are TrackEval's (``HOTA``, ``CLEAR``, ``Identity``: the MOT Challenge's own code, the
``trackeval`` extra, MIT licence); without it IDF1 and MOTA come from motmetrics and HOTA is absent.

Ground truth rows with ``conf`` 0, or with a visibility below ``min_visibility``, are "don't care"
boxes, as in the MOT Challenge's preprocessing: a predicted box matched to one (IoU >= 0.5) is
dropped, neither a hit nor a false positive, and the row itself is no miss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from cvapps.errors import CvappsError
from cvapps.formats.mot import MotRow, read_mot

MATCH_IOU = 0.5  # MOT's threshold for a predicted box to cover a ground truth box


@dataclass(frozen=True)
class TrackScores:
    """hota (None without TrackEval), idf1, mota in [0, 1] (mota may be negative); switches: id switches;
    gt_ids / pred_ids: distinct ids; frames: frames with ground truth or predictions."""

    hota: float | None
    idf1: float
    mota: float
    switches: int
    gt_ids: int
    pred_ids: int
    frames: int

    def to_json(self) -> dict[str, Any]:
        return {k: (None if v is None else round(v, 4) if isinstance(v, float) else v)
                for k, v in self.__dict__.items()}

    def line(self) -> str:
        hota = "n/a" if self.hota is None else f"{self.hota:.3f}"
        return (f"HOTA {hota}  IDF1 {self.idf1:.3f}  MOTA {self.mota:.3f}  id switches {self.switches}  "
                f"ids {self.pred_ids} (truth {self.gt_ids})  frames {self.frames}")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes [x, y, w, h]: (len(a), len(b))."""
    a, b = a.reshape(-1, 4), b.reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _by_frame(rows: Sequence[MotRow]) -> dict[int, list[MotRow]]:
    out: dict[int, list[MotRow]] = {}
    for r in rows:
        out.setdefault(r.frame, []).append(r)
    return out


def _frames(gt: Sequence[MotRow], pred: Sequence[MotRow], min_visibility: float) -> list[tuple[list[MotRow], list[MotRow]]]:
    """Per frame (gt rows, pred rows) after removing the don't-care rows and the predictions on them."""
    gt_f, pred_f = _by_frame(gt), _by_frame(pred)
    frames = []
    for f in sorted(set(gt_f) | set(pred_f)):
        g, p = gt_f.get(f, []), pred_f.get(f, [])
        ignore = [r.conf == 0 or 0 <= r.visibility < min_visibility for r in g]
        if any(ignore) and p:
            iou = iou_matrix(np.array([r.box for r in g], float), np.array([r.box for r in p], float))
            rows, cols = linear_sum_assignment(-iou)
            drop = {c for r, c in zip(rows, cols) if ignore[r] and iou[r, c] >= MATCH_IOU}
            p = [r for k, r in enumerate(p) if k not in drop]
        frames.append(([r for r, i in zip(g, ignore) if not i], p))
    return frames


def _trackeval_data(frames: list[tuple[list[MotRow], list[MotRow]]]) -> dict[str, Any]:
    """The per-sequence dict TrackEval's metrics read (ids 0-based and contiguous)."""
    gt_ids = {i: k for k, i in enumerate(sorted({r.id for g, _ in frames for r in g}))}
    pred_ids = {i: k for k, i in enumerate(sorted({r.id for _, p in frames for r in p}))}
    data: dict[str, Any] = {"num_gt_ids": len(gt_ids), "num_tracker_ids": len(pred_ids), "num_timesteps": len(frames),
                            "gt_ids": [], "tracker_ids": [], "similarity_scores": [],
                            "num_gt_dets": sum(len(g) for g, _ in frames),
                            "num_tracker_dets": sum(len(p) for _, p in frames)}
    for g, p in frames:
        data["gt_ids"].append(np.array([gt_ids[r.id] for r in g], int))
        data["tracker_ids"].append(np.array([pred_ids[r.id] for r in p], int))
        data["similarity_scores"].append(iou_matrix(np.array([r.box for r in g], float),
                                                    np.array([r.box for r in p], float)))
    return data


def _with_trackeval(frames: list[tuple[list[MotRow], list[MotRow]]]) -> tuple[float, float, float, int] | None:
    try:
        from trackeval.metrics import CLEAR, HOTA, Identity  # lazily: an optional extra
    except ImportError:
        return None
    data = _trackeval_data(frames)
    config = {"PRINT_CONFIG": False, "THRESHOLD": MATCH_IOU}
    hota = HOTA().eval_sequence(data)
    clear = CLEAR(config).eval_sequence(data)
    ident = Identity(config).eval_sequence(data)
    return float(np.mean(hota["HOTA"])), float(ident["IDF1"]), float(clear["MOTA"]), int(clear["IDSW"])


def _with_motmetrics(frames: list[tuple[list[MotRow], list[MotRow]]]) -> tuple[float, float, int]:
    import motmetrics as mm  # lazily: the fallback when TrackEval is not installed

    if not hasattr(np, "asfarray"):  # motmetrics 1.4 calls np.asfarray, which NumPy 2 removed
        np.asfarray = lambda a, dtype=float: np.asarray(a, dtype=dtype)  # type: ignore[attr-defined]
    acc = mm.MOTAccumulator(auto_id=True)
    for g, p in frames:
        acc.update([r.id for r in g], [r.id for r in p],
                   mm.distances.iou_matrix(np.array([r.box for r in g], float).reshape(-1, 4),
                                           np.array([r.box for r in p], float).reshape(-1, 4), max_iou=MATCH_IOU))
    s = mm.metrics.create().compute(acc, metrics=["idf1", "mota", "num_switches"], name="seq")
    return float(s["idf1"].iloc[0]), float(s["mota"].iloc[0]), int(s["num_switches"].iloc[0])


def evaluate_rows(pred: Sequence[MotRow], gt: Sequence[MotRow], min_visibility: float = 0.0) -> TrackScores:
    """HOTA / IDF1 / MOTA of ``pred`` against ``gt`` (see the module doc for ``min_visibility``)."""
    if not gt:
        raise CvappsError("track-eval: the ground truth has no boxes")
    if not math.isfinite(min_visibility) or not 0 <= min_visibility <= 1:
        raise CvappsError(f"track-eval: --min-visibility must be in [0, 1], got {min_visibility}")
    frames = _frames(gt, pred, min_visibility)
    scores = _with_trackeval(frames)
    if scores is not None:
        hota, idf1, mota, switches = scores
    else:
        try:
            idf1, mota, switches = _with_motmetrics(frames)
        except ImportError:
            raise CvappsError('track-eval needs TrackEval or motmetrics: pip install "cvapps[trackeval]"') from None
        hota = None
    return TrackScores(hota, idf1, mota, switches, len({r.id for g, _ in frames for r in g}),
                       len({r.id for _, p in frames for r in p}), len(frames))


def evaluate_files(pred: str | Path, gt: str | Path, min_visibility: float = 0.0) -> TrackScores:
    """:func:`evaluate_rows` on two MOT files (a malformed file is a one-line DataError)."""
    return evaluate_rows(read_mot(pred), read_mot(gt), min_visibility)
