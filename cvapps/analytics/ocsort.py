"""``--track ocsort``: an OC-SORT-style tracker that keeps identities through occlusions.

ByteTrack (ultralytics) loses a track whose object is hidden for a few frames: its Kalman prediction
drifts while no box updates it, the object reappears away from the prediction, and a new id is born
(and a line count goes wrong). This tracker adds, on ultralytics' ``KalmanFilterXYAH``:

* **observation-centric re-update** (OC-SORT, Cao et al. 2023): when a track is matched again after
  a gap, its filter is rolled back to the last observation and re-run over a straight virtual path
  to the new one, so its velocity comes from observations, not from the drifted prediction;
* **observation-centric recovery**: a track still unmatched after the first two stages is matched
  by IoU of its *last observed* box with the boxes left over (an object that stopped while hidden);
* **appearance** (when the detections carry ``data["embedding"]``, pooled from the detector's own
  features: :mod:`cvapps.analytics.embed`): a fused IoU + cosine cost (BoT-SORT's idea) with a gate,
  and a last stage that re-attaches a lost track to a new box near its last position whose
  appearance matches (the object came out of an occlusion or back into the frame);
* **merged boxes**: a box that also covers a hidden track's prediction (the detector drew one box
  around two objects) keeps its track's id but updates neither its motion nor its appearance, so
  both tracks leave the merge on their own courses (:meth:`OcSortTracker._overlaps`);
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
from cvapps.nms import box_area_numpy, box_intersection_numpy
from cvapps.nms import box_iou_numpy as box_iou

INF = 1e6  # cost of a forbidden pair
EDGE_PX = 2.0  # a box this close to the frame border is cut by it (see _without_cut_boxes)
CROWD_IOU = 0.1  # a box overlapping another track's prediction this much keeps its track's appearance as it was
MERGE_COVER = 0.3  # a box holding this share of an unmatched track's prediction may hold both (_overlaps)


@dataclass(frozen=True)
class OcSortOptions:
    """high: boxes >= this take part in the first association (and may start tracks at >= new_track);
    low: boxes in [low, high) only extend tracks matched in the last frame (ByteTrack); match_iou: the
    lowest IoU of a motion match; appearance_gate: the largest cosine distance of an appearance match
    (reattach_gate: of a re-attachment, stricter: no IoU backs it up);
    appearance_weight: share of the cosine distance in the fused cost; fused_cost_limit: leaving a track
    and a box unmatched costs this much in the fused association (:func:`_assign`); min_hits: matched frames before
    a track gets an id; reattach_reach: how far (box diagonals, plus the same per 10 frames of gap)
    a lost track may be re-attached from its last observed centre; ema: embedding smoothing;
    merge_frames: how long a lost track's prediction is trusted to tell a merged box (:meth:`_overlaps`)."""

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
    merge_frames: int = 30


def _assign(cost: np.ndarray, limit: float | None) -> list[tuple[int, int]]:
    """Minimum-cost pairs (row, col) of ``cost`` without forbidden (INF) ones. With ``limit``, leaving a
    row and a column unmatched costs ``limit`` (``lap.lapjv``'s ``cost_limit``, as ultralytics'
    matching): a square assignment would otherwise hand a track a poor box just to pair every row,
    pushing the box's owner onto a wrong one (two objects separating swap ids). SciPy on the augmented
    matrix rather than ``lap.lapjv(cost, extend_cost=True, cost_limit=limit)``, which gives the same
    pairs but costs ~10 us a call against ~1-2 us here, four calls a frame."""
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


def multi_update(kf: Any, mean: np.ndarray, cov: np.ndarray,
                 measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``kf.update`` (ultralytics' ``KalmanFilterXYAH``) for N tracks at once: mean (N, 8), cov (N, 8, 8),
    measurement (N, 4) xyah -> (mean, cov). Written here because ultralytics batches the prediction
    (``multi_predict``) but not the correction, which is most of a tracker's per-frame cost."""
    std = kf._std_weight_position * mean[:, 3:4] * np.array([1.0, 1.0, 0.0, 1.0])
    std[:, 2] = 1e-1
    projected_cov = cov[:, :4, :4] + np.eye(4) * np.square(std)[:, None, :]  # (N, 4, 4)
    gain = np.linalg.solve(projected_cov, cov[:, :4, :]).transpose(0, 2, 1)  # (N, 8, 4): cov H^T S^-1
    innovation = measurement - mean[:, :4]
    new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
    new_cov = cov - gain @ projected_cov @ gain.transpose(0, 2, 1)
    return new_mean, new_cov


def _xyah(box: np.ndarray) -> np.ndarray:
    """xyxy boxes (..., 4) -> Kalman measurements (..., 4): centre x, centre y, aspect w / h, height."""
    w, h = box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]
    return np.stack([(box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2, w / np.maximum(h, 1e-6), h],
                    axis=-1).astype(np.float64)


def _xyxy(mean: np.ndarray) -> np.ndarray:
    """Kalman means (..., 8) xyah-first -> (..., 4) xyxy boxes."""
    cx, cy, a, h = mean[..., 0], mean[..., 1], mean[..., 2], mean[..., 3]
    w = a * h
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


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
    re-update), appearance, hits; ``track_id`` 0 until it is confirmed. ``seen`` also counts frames
    where the track held a merged box (:meth:`OcSortTracker._overlaps`), which are no observation."""

    mean: np.ndarray
    cov: np.ndarray
    box: np.ndarray  # last observed box, xyxy
    frame: int  # frame of the last observation
    seen: int  # last frame the track was matched to a box (>= frame)
    score: float
    cls: float
    embedding: np.ndarray | None
    saved: tuple[np.ndarray, np.ndarray] = field(default=None)  # type: ignore[assignment]
    hits: int = 1
    track_id: int = 0
    predicted: np.ndarray = field(default=None)  # type: ignore[assignment]  # this frame's prediction, xyxy


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
        return [t for t in self.tracks if t.track_id and t.seen == self.frame]

    @property
    def lost_stracks(self) -> list[Track]:
        return [t for t in self.tracks if t.track_id and t.seen < self.frame]

    def update(self, boxes: Any, image: Any = None, embeddings: np.ndarray | None = None) -> np.ndarray:
        """One frame: ``boxes`` with ``xyxy``, ``conf``, ``cls``; embeddings (N, D) L2-normalised or None."""
        self.frame += 1
        xyxy, conf = np.asarray(boxes.xyxy, np.float64).reshape(-1, 4), np.asarray(boxes.conf, np.float64)
        if embeddings is not None and image is not None:
            embeddings = _without_cut_boxes(embeddings, xyxy, image.shape[:2])
        self.tracks = [t for t in self.tracks if self.frame - t.seen <= self.max_frames_lost]
        if self.tracks:  # one vectorised Kalman step for all tracks
            means, covs = self.kf.multi_predict(np.stack([t.mean for t in self.tracks]),
                                                np.stack([t.cov for t in self.tracks]))
            for t, mean, cov, box in zip(self.tracks, means, covs, _xyxy(means)):
                t.mean, t.cov, t.predicted = mean, cov, box
        high = [i for i in range(len(conf)) if conf[i] >= self.opt.high]
        low = [i for i in range(len(conf)) if self.opt.low <= conf[i] < self.opt.high]
        pairs: list[tuple[Track, int]] = []
        free = list(self.tracks)
        for stage in ("fused", "low", "recover", "reattach"):
            dets = high if stage != "low" else low
            cand = free if stage != "low" else [t for t in free if t.seen == self.frame - 1]
            matched = self._match(cand, dets, xyxy, embeddings, stage)
            pairs += matched
            used_t, used_d = {id(t) for t, _ in matched}, {d for _, d in matched}
            free = [t for t in free if id(t) not in used_t]
            if stage != "low":
                high = [d for d in high if d not in used_d]
            else:
                low = [d for d in low if d not in used_d]
        crowded, merged = self._overlaps(pairs, free, xyxy)
        for t, _ in (p for p, shared in zip(pairs, merged) if shared):
            t.seen = self.frame  # the box holds the track's object and a hidden one: no observation
        observed = [(p, busy) for p, busy, shared in zip(pairs, crowded, merged) if not shared]
        self._correct([t for (t, _), _ in observed], xyxy[[d for (_, d), _ in observed]])
        for (t, d), busy in observed:
            emb = None if embeddings is None or busy or np.isnan(embeddings[d, 0]) else embeddings[d]
            self._observe(t, xyxy[d], float(conf[d]), boxes.cls[d], emb)
        self.tracks = [t for t in self.tracks if t.track_id or t.seen == self.frame]  # unconfirmed: no second chance
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
        if stage == "reattach":
            cost = self._reattach_cost(tracks, dets, xyxy, emb)
        else:
            refs = np.stack([t.box if stage == "recover" else t.predicted for t in tracks])
            appearance = emb[dets] if stage != "low" and emb is not None else None
            cost = self._motion_cost(tracks, refs, xyxy[dets], appearance)
        limit = self.opt.fused_cost_limit if stage == "fused" and emb is not None else None
        return [(tracks[r], dets[c]) for r, c in _assign(cost, limit)]

    def _motion_cost(self, tracks: list[Track], refs: np.ndarray, boxes: np.ndarray,
                     emb: np.ndarray | None) -> np.ndarray:
        """1 - IoU of the tracks' reference boxes (prediction, or last observation in the recovery
        stage) with ``boxes``, fused with the cosine distance when both sides have embeddings; pairs
        below ``match_iou`` or beyond the appearance gate are forbidden. The last observation is not
        mixed into the first stage: after a few hidden frames it is stale, and its IoU with the other
        object of a crossing pair can beat the right pair's (ids swap)."""
        iou = box_iou(refs, boxes)
        cost = 1.0 - iou
        if emb is not None:
            app = self._appearance(tracks, emb)
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
            if not t.track_id or t.seen == self.frame:
                continue
            diag = float(np.hypot(*(t.box[2:] - t.box[:2])))
            reach = self.opt.reattach_reach * diag * (1 + (self.frame - t.frame) / 10)
            near = np.hypot(*(centres - (t.box[:2] + t.box[2:]) / 2).T) <= reach
            ok = near & (app[r] <= self.opt.reattach_gate)
            cost[r, ok] = app[r, ok]
        return cost

    def _overlaps(self, pairs: list[tuple[Track, int]], unmatched: list[Track],
                  xyxy: np.ndarray) -> tuple[list[bool], list[bool]]:
        """Per matched pair, (crowded, merged), from the box's IoU with the other confirmed tracks' predictions.

        crowded: the box overlaps another track (IoU > ``CROWD_IOU``). It mixes two objects' features,
        so it does not update the track's appearance (the appearance that tells them apart later).

        merged: the box also covers the prediction of a track left unmatched, lost at most
        ``merge_frames`` ago (at least ``MERGE_COVER`` of its area): the detector most likely drew one
        box around two objects, one hiding the other. The track keeps its id on the box, but the box updates neither
        its motion nor its last observation: its centre moves as the pair's average, and a filter fed
        with it would forget which way the object went, so the two would swap ids when they separate.
        The next clean box re-updates the track over the gap (OC-SORT), as after a miss."""
        others = [t for t in self.tracks if t.track_id]
        if len(others) < 2 or not pairs:
            return [False] * len(pairs), [False] * len(pairs)
        matched_boxes = xyxy[[d for _, d in pairs]]
        iou = box_iou(matched_boxes, np.stack([t.predicted for t in others]))
        column = {id(t): c for c, t in enumerate(others)}
        for r, (t, _) in enumerate(pairs):
            if id(t) in column:
                iou[r, column[id(t)]] = 0.0
        hidden = [t for t in unmatched if id(t) in column and self.frame - t.seen <= self.opt.merge_frames]
        merged = np.zeros(len(pairs), bool)
        if hidden:
            hidden_boxes = np.stack([t.predicted for t in hidden])
            covered = box_intersection_numpy(matched_boxes, hidden_boxes) / np.maximum(
                box_area_numpy(hidden_boxes)[None, :], 1e-9)
            merged = covered.max(1) >= MERGE_COVER
        return list(iou.max(1) > CROWD_IOU), list(merged)

    @staticmethod
    def _appearance(tracks: list[Track], emb: np.ndarray) -> np.ndarray:
        """Cosine distance (tracks x boxes); NaN for a track without an embedding."""
        have = [r for r, t in enumerate(tracks) if t.embedding is not None]
        out = np.full((len(tracks), len(emb)), np.nan)
        if have:
            out[have] = 1.0 - np.stack([tracks[r].embedding for r in have]) @ emb.T
        return out

    # -- track life -------------------------------------------------------------------------------
    def _start(self, box: np.ndarray, score: float, cls: float, emb: np.ndarray | None) -> None:
        mean, cov = self.kf.initiate(_xyah(box))
        usable = emb is not None and not np.isnan(emb[0])  # a box cut by the border has no appearance
        t = Track(mean, cov, box.copy(), self.frame, self.frame, score, float(cls), emb.copy() if usable else None,
                  predicted=box.copy())
        t.saved = (mean.copy(), cov.copy())
        if self.frame == 1 or self.opt.min_hits <= 1:  # the first frame's objects get ids at once
            self._confirm(t)
        self.tracks.append(t)

    def _confirm(self, t: Track) -> None:
        self.next_id += 1
        t.track_id = self.next_id

    def _correct(self, tracks: list[Track], boxes: np.ndarray) -> None:
        """Kalman-correct ``tracks`` with their new boxes in one batched step; a track seen again after a
        gap is first re-updated (OC-SORT): back to its last observation, then a straight virtual path."""
        for t, box in zip(tracks, boxes):
            gap = self.frame - t.frame
            if gap > 1:
                mean, cov = t.saved
                start, end = _xyah(t.box), _xyah(box)
                for k in range(1, gap):
                    mean, cov = self.kf.predict(mean, cov)
                    mean, cov = self.kf.update(mean, cov, start + (end - start) * k / gap)
                t.mean, t.cov = self.kf.predict(mean, cov)
        if tracks:
            means, covs = multi_update(self.kf, np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks]),
                                       _xyah(boxes))
            for t, mean, cov in zip(tracks, means, covs):
                t.mean, t.cov = mean, cov

    def _observe(self, t: Track, box: np.ndarray, score: float, cls: float, emb: np.ndarray | None) -> None:
        """Record a (Kalman-corrected) track's new observation, appearance and hit."""
        t.saved = (t.mean.copy(), t.cov.copy())
        t.box, t.frame, t.seen, t.score, t.cls = box.copy(), self.frame, self.frame, score, float(cls)
        t.hits += 1
        if emb is not None:
            e = emb if t.embedding is None else self.opt.ema * t.embedding + (1 - self.opt.ema) * emb
            t.embedding = e / max(float(np.linalg.norm(e)), 1e-9)
        if not t.track_id and t.hits >= self.opt.min_hits:
            self._confirm(t)
