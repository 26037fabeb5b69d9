"""``--track ocsort``: an OC-SORT-style tracker that keeps identities through occlusions.

ByteTrack (ultralytics) loses a track whose object is hidden for a few frames: its Kalman prediction
drifts while no box updates it, the object reappears away from the prediction, and a new id is born
(and a line count goes wrong). This tracker adds, on ultralytics' ``KalmanFilterXYAH``:

* **observation-centric re-update** (OC-SORT, Cao et al. 2023): when a track is matched again after
  a gap, its filter is rolled back to the last observation and re-run over a straight virtual path
  to the new one, so its velocity comes from observations, not from the drifted prediction;
* **observation-centric recovery**: a lost track is also matched by IoU with its *last observed*
  box, not only with its prediction;
* **appearance** (when the detections carry ``data["embedding"]``, pooled from the detector's own
  features: :mod:`cvapps.analytics.embed`): a fused IoU + cosine cost (BoT-SORT's idea) with a gate,
  and a last stage that re-attaches a lost track to a new box near its last position whose
  appearance matches (the object came out of an occlusion or back into the frame);
* ByteTrack's second association of low-score boxes with the tracks matched in the last frame.

Same interface as ultralytics' trackers for :class:`~cvapps.analytics.tracking.Tracker`:
``update(boxes, image, embeddings) -> rows [x1, y1, x2, y2, id, score, cls, idx]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from cvapps import ultralytics_parts

INF = 1e6  # cost of a forbidden pair
EDGE_PX = 2.0  # a box this close to the frame border is cut by it (see _without_cut_boxes)
CROWD_IOU = 0.1  # a box overlapping another track's prediction this much keeps its track's appearance as it was


@dataclass(frozen=True)
class OcSortOptions:
    """high: boxes >= this take part in the first association (and may start tracks at >= new_track);
    low: boxes in [low, high) only extend tracks matched in the last frame (ByteTrack); match_iou: the
    lowest IoU of a motion match; appearance_gate: the largest cosine distance of an appearance match
    (reattach_gate: of a re-attachment, stricter: no IoU backs it up);
    appearance_weight: share of the cosine distance in the fused cost; fused_cost_limit: leaving a track
    and a box unmatched costs this much in the fused association (:func:`_assign`); min_hits: matched frames before
    a track gets an id; reattach_reach: how far (box diagonals, plus the same per 10 frames of gap)
    a lost track may be re-attached from its last observed centre; ema: embedding smoothing."""

    high: float = 0.25
    low: float = 0.1
    new_track: float = 0.4
    match_iou: float = 0.2
    appearance_gate: float = 0.25
    reattach_gate: float = 0.1
    appearance_weight: float = 0.5
    fused_cost_limit: float = 0.5
    min_hits: int = 3
    reattach_reach: float = 1.0
    ema: float = 0.9


def _assign(cost: np.ndarray, limit: float | None) -> list[tuple[int, int]]:
    """Minimum-cost pairs (row, col) of ``cost`` without forbidden (INF) ones. With ``limit``, leaving a
    row and a column unmatched costs ``limit`` (``lap.lapjv``'s ``cost_limit``, as ultralytics'
    matching): a square assignment would otherwise hand a track a poor box just to pair every row,
    pushing the box's owner onto a wrong one (two objects separating swap ids)."""
    if limit is None:
        rows, cols = linear_sum_assignment(cost)
        return [(r, c) for r, c in zip(rows, cols) if cost[r, c] < INF]
    n, m = cost.shape
    full = np.full((n + m, m + n), INF)
    full[:n, :m] = cost
    full[:n, m:][np.eye(n, dtype=bool)] = limit / 2
    full[n:, :m][np.eye(m, dtype=bool)] = limit / 2
    full[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(full)
    return [(r, c) for r, c in zip(rows, cols) if r < n and c < m and cost[r, c] < INF]


def _xyah(box: np.ndarray) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, w / max(h, 1e-6), h], np.float64)


def _xyxy(mean: np.ndarray) -> np.ndarray:
    cx, cy, a, h = mean[:4]
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes: (len(a), len(b))."""
    a, b = a.reshape(-1, 4), b.reshape(-1, 4)
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _without_cut_boxes(embeddings: np.ndarray, xyxy: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """``embeddings`` with NaN rows for boxes cut by the frame border (within ``EDGE_PX``): a sliver of
    an object leaving or entering the frame looks like little of it, so such a box is matched on
    motion alone and does not update its track's appearance."""
    h, w = image_hw
    cut = (xyxy[:, 0] <= EDGE_PX) | (xyxy[:, 1] <= EDGE_PX) | (xyxy[:, 2] >= w - EDGE_PX) | (xyxy[:, 3] >= h - EDGE_PX)
    if not cut.any():
        return embeddings
    out = embeddings.astype(np.float64, copy=True)
    out[cut] = np.nan
    return out


@dataclass(eq=False)
class Track:
    """One object: Kalman state, its last observation (and the filter state right after it, for the
    re-update), appearance, hits; ``track_id`` 0 until it is confirmed."""

    mean: np.ndarray
    cov: np.ndarray
    box: np.ndarray  # last observed box, xyxy
    frame: int  # frame of the last observation
    score: float
    cls: float
    embedding: np.ndarray | None
    saved: tuple[np.ndarray, np.ndarray] = field(default=None)  # type: ignore[assignment]
    hits: int = 1
    track_id: int = 0

    @property
    def predicted(self) -> np.ndarray:
        return _xyxy(self.mean)


class OcSortTracker:
    """Tracks of one source (see the module doc); ``max_frames_lost`` is set by the caller each frame."""

    def __init__(self, options: OcSortOptions = OcSortOptions()) -> None:
        self.opt = options
        self.kf = ultralytics_parts.KalmanFilterXYAH()
        self.tracks: list[Track] = []
        self.frame = 0
        self.next_id = 0
        self.max_frames_lost = 30

    # ultralytics' tracker attributes that Tracker reads to prune its id map
    @property
    def tracked_stracks(self) -> list[Track]:
        return [t for t in self.tracks if t.track_id and t.frame == self.frame]

    @property
    def lost_stracks(self) -> list[Track]:
        return [t for t in self.tracks if t.track_id and t.frame < self.frame]

    def update(self, boxes: Any, image: Any = None, embeddings: np.ndarray | None = None) -> np.ndarray:
        """One frame: ``boxes`` with ``xyxy``, ``conf``, ``cls``; embeddings (N, D) L2-normalised or None."""
        self.frame += 1
        xyxy, conf = np.asarray(boxes.xyxy, np.float64).reshape(-1, 4), np.asarray(boxes.conf, np.float64)
        if embeddings is not None and image is not None:
            embeddings = _without_cut_boxes(embeddings, xyxy, image.shape[:2])
        self.tracks = [t for t in self.tracks if self.frame - t.frame <= self.max_frames_lost]
        if self.tracks:  # one vectorised Kalman step for all tracks
            means, covs = self.kf.multi_predict(np.stack([t.mean for t in self.tracks]),
                                                np.stack([t.cov for t in self.tracks]))
            for t, mean, cov in zip(self.tracks, means, covs):
                t.mean, t.cov = mean, cov
        high = [i for i in range(len(conf)) if conf[i] >= self.opt.high]
        low = [i for i in range(len(conf)) if self.opt.low <= conf[i] < self.opt.high]
        pairs: list[tuple[Track, int]] = []
        free = list(self.tracks)
        for stage in ("fused", "low", "reattach"):
            dets = high if stage != "low" else low
            cand = free if stage != "low" else [t for t in free if t.frame == self.frame - 1]
            matched = self._match(cand, dets, xyxy, embeddings, stage)
            pairs += matched
            used_t, used_d = {id(t) for t, _ in matched}, {d for _, d in matched}
            free = [t for t in free if id(t) not in used_t]
            if stage != "low":
                high = [d for d in high if d not in used_d]
            else:
                low = [d for d in low if d not in used_d]
        crowded = self._crowded(pairs, xyxy)
        for (t, d), busy in zip(pairs, crowded):
            emb = None if embeddings is None or busy or np.isnan(embeddings[d, 0]) else embeddings[d]
            self._update(t, xyxy[d], float(conf[d]), boxes.cls[d], emb)
        self.tracks = [t for t in self.tracks if t.track_id or t.frame == self.frame]  # unconfirmed: no second chance
        for d in high:
            if conf[d] >= self.opt.new_track:
                self._start(xyxy[d], float(conf[d]), boxes.cls[d], None if embeddings is None else embeddings[d])
                pairs.append((self.tracks[-1], d))
        rows = [[*xyxy[d], t.track_id, conf[d], boxes.cls[d], d] for t, d in pairs if t.track_id]
        return np.asarray(rows, np.float64).reshape(-1, 8)

    # -- association ------------------------------------------------------------------------------
    def _match(self, tracks: list[Track], dets: list[int], xyxy: np.ndarray, emb: np.ndarray | None,
               stage: str) -> list[tuple[Track, int]]:
        if not tracks or not dets:
            return []
        cost = self._reattach_cost(tracks, dets, xyxy, emb) if stage == "reattach" else \
            self._motion_cost(tracks, dets, xyxy, emb if stage == "fused" else None)
        limit = self.opt.fused_cost_limit if stage == "fused" and emb is not None else None
        return [(tracks[r], dets[c]) for r, c in _assign(cost, limit)]

    def _motion_cost(self, tracks: list[Track], dets: list[int], xyxy: np.ndarray,
                     emb: np.ndarray | None) -> np.ndarray:
        """1 - IoU with the prediction (or with the last observation, when better: OC-SORT's recovery),
        fused with the cosine distance when both sides have embeddings; pairs below ``match_iou`` or
        beyond the appearance gate are forbidden."""
        d = xyxy[dets]
        iou = np.maximum(box_iou(np.stack([t.predicted for t in tracks]), d),
                         box_iou(np.stack([t.box for t in tracks]), d))
        cost = 1.0 - iou
        if emb is not None:
            app = self._appearance(tracks, emb[dets])
            w = self.opt.appearance_weight
            cost = np.where(np.isnan(app), cost, (1 - w) * cost + w * np.nan_to_num(app))
            cost[app > self.opt.appearance_gate] = INF
        cost[iou < self.opt.match_iou] = INF
        return cost

    def _reattach_cost(self, tracks: list[Track], dets: list[int], xyxy: np.ndarray,
                       emb: np.ndarray | None) -> np.ndarray:
        """Lost confirmed tracks vs boxes left over: cosine distance, for boxes whose centre lies within
        reach of the track's last observed centre. Without embeddings nothing is re-attached here."""
        cost = np.full((len(tracks), len(dets)), INF)
        if emb is None:
            return cost
        app = np.nan_to_num(self._appearance(tracks, emb[dets]), nan=INF)
        centres = (xyxy[dets, :2] + xyxy[dets, 2:]) / 2
        for r, t in enumerate(tracks):
            if not t.track_id or t.frame == self.frame:
                continue
            diag = float(np.hypot(*(t.box[2:] - t.box[:2])))
            reach = self.opt.reattach_reach * diag * (1 + (self.frame - t.frame) / 10)
            near = np.hypot(*(centres - (t.box[:2] + t.box[2:]) / 2).T) <= reach
            ok = near & (app[r] <= self.opt.reattach_gate)
            cost[r, ok] = app[r, ok]
        return cost

    def _crowded(self, pairs: list[tuple[Track, int]], xyxy: np.ndarray) -> list[bool]:
        """Per matched pair: does its box overlap another track (its prediction, IoU > ``CROWD_IOU``)?
        Such a box mixes two objects' features, so it does not update the track's appearance (the
        appearance that tells them apart when they separate)."""
        others = [t for t in self.tracks if t.track_id]
        if len(others) < 2 or not pairs:
            return [False] * len(pairs)
        iou = box_iou(xyxy[[d for _, d in pairs]], np.stack([t.predicted for t in others]))
        for r, (t, _) in enumerate(pairs):
            if t in others:
                iou[r, others.index(t)] = 0.0
        return list(iou.max(1) > CROWD_IOU)

    @staticmethod
    def _appearance(tracks: list[Track], emb: np.ndarray) -> np.ndarray:
        """Cosine distance (tracks x boxes); NaN for a track without an embedding."""
        out = np.full((len(tracks), len(emb)), np.nan)
        for r, t in enumerate(tracks):
            if t.embedding is not None:
                out[r] = 1.0 - emb @ t.embedding
        return out

    # -- track life -------------------------------------------------------------------------------
    def _start(self, box: np.ndarray, score: float, cls: float, emb: np.ndarray | None) -> None:
        mean, cov = self.kf.initiate(_xyah(box))
        usable = emb is not None and not np.isnan(emb[0])  # a box cut by the border has no appearance
        t = Track(mean, cov, box.copy(), self.frame, score, float(cls), emb.copy() if usable else None)
        t.saved = (mean.copy(), cov.copy())
        if self.frame == 1 or self.opt.min_hits <= 1:  # the first frame's objects get ids at once
            self._confirm(t)
        self.tracks.append(t)

    def _confirm(self, t: Track) -> None:
        self.next_id += 1
        t.track_id = self.next_id

    def _update(self, t: Track, box: np.ndarray, score: float, cls: float, emb: np.ndarray | None) -> None:
        gap = self.frame - t.frame
        if gap > 1:  # observation-centric re-update: back to the last observation, then a straight path
            mean, cov = t.saved
            start, end = _xyah(t.box), _xyah(box)
            for k in range(1, gap):
                mean, cov = self.kf.predict(mean, cov)
                mean, cov = self.kf.update(mean, cov, start + (end - start) * k / gap)
            mean, cov = self.kf.predict(mean, cov)
            t.mean, t.cov = mean, cov
        t.mean, t.cov = self.kf.update(t.mean, t.cov, _xyah(box))
        t.saved = (t.mean.copy(), t.cov.copy())
        t.box, t.frame, t.score, t.cls = box.copy(), self.frame, score, float(cls)
        t.hits += 1
        if emb is not None:
            e = emb if t.embedding is None else self.opt.ema * t.embedding + (1 - self.opt.ema) * emb
            t.embedding = e / max(float(np.linalg.norm(e)), 1e-9)
        if not t.track_id and t.hits >= self.opt.min_hits:
            self._confirm(t)
