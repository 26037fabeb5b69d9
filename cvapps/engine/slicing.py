"""Sliced inference: large frames cut into overlapping slices, predicted batched, merged back.

:class:`SlicedPredictor` wraps the one :class:`~cvapps.engine.predict.Predictor`: every frame is cut
into ``size`` x ``size`` windows overlapping by ``overlap`` (the last window of a row/column flush
with the image's edge, so all windows share one shape and batch together), optionally plus the whole
frame (``full``: one pass for objects larger than a slice). The windows are numpy views (no copy) fed
as frames to the wrapped predictor, so they are batched ``batch`` at a time through one forward, in
its prefetch thread; its per-window predictions are merged back into one :class:`Prediction` per
frame in original pixels, so every sink, drawing, tracking and counting works unchanged:

* boxes: those cut by an inner slice border that lie whole in the neighbouring slice (their far edge
  within the overlap) are dropped, then the rest are merged class-wise: ``nms`` (torchvision's
  ``batched_nms`` at ``merge_iou``) or ``nmm`` (greedy non-maximum merging: a box absorbs the lower
  scored boxes of its class whose intersection over the smaller box is >= ``merge_iou``, as SAHI's
  GREEDYNMM); instance masks are pasted into the frame (OR of a merged group's);
* semantic masks: each pixel is taken from the slice whose centre is nearest (the overlap is split at
  its middle); per-class scores are averaged weighted by pixels;
* presence (multitask): the per-class maximum over the slices.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cvapps.data.windows import Window, slice_windows
from cvapps.engine.predict import Predictor, check_options
from cvapps.errors import CvappsError, shorten
from cvapps.nms import class_wise_nms
from cvapps.structures import Frame
from cvapps.structures.prediction import (
    Detections,
    Prediction,
    Presence,
    SegmentationMask,
)
from cvapps.tasks.base import Task
from cvapps.tasks.detection_common import DetectionTask

MERGES = ("nms", "nmm")
EDGE_PX = 2.0  # a box edge this close to a slice border was cut by it (boxes are clipped to the slice)
_DEFAULT_MAX_DET = 300
_DEFAULT_PRESENCE = 0.5


@dataclass(frozen=True)
class SliceOptions:
    """How frames are sliced and merged (see the module doc).

    size: slice side in pixels, or "auto": the model's input size. overlap: fraction of ``size`` that
    neighbouring slices share, in [0, 0.9]. merge: "nms" or "nmm". merge_iou: IoU (nms) or intersection
    over the smaller box (nmm) at which two boxes are one object. full: also predict the whole frame.
    """

    size: int | str = "auto"
    overlap: float = 0.2
    merge: str = "nms"
    merge_iou: float = 0.5
    full: bool = False

    def __post_init__(self) -> None:
        size = self.size
        if not (size == "auto" or (isinstance(size, int) and not isinstance(size, bool) and size >= 32)):
            raise CvappsError(f"slice size must be an integer >= 32 or 'auto', got {shorten(size)}")
        if not (isinstance(self.overlap, (int, float)) and 0 <= self.overlap <= 0.9):
            raise CvappsError(f"slice overlap must be a fraction in [0, 0.9], got {shorten(self.overlap)}")
        if self.merge not in MERGES:
            raise CvappsError(f"slice merge must be one of {', '.join(MERGES)}, got {shorten(self.merge)}")
        if not (isinstance(self.merge_iou, (int, float)) and 0 < self.merge_iou <= 1):
            raise CvappsError(f"slice merge IoU must be in (0, 1], got {shorten(self.merge_iou)}")

    def side(self, imgsz: int) -> int:
        """The slice side in pixels (``auto``: ``imgsz``, the model's input size)."""
        return int(imgsz) if self.size == "auto" else int(self.size)


def slice_options(size: Any, overlap: float | None = None, merge: str | None = None,
                  full: bool | None = None) -> SliceOptions | None:
    """``SliceOptions`` from what a user writes: 640, "640", "auto", a SliceOptions (the other
    arguments replace its fields when given), or None/False/0 for no slicing."""
    if size is None or size is False or (isinstance(size, (int, str)) and str(size).strip() in ("0", "")):
        return None
    base = size if isinstance(size, SliceOptions) else None
    if base is None:
        text = str(size).strip().lower()
        value: int | str = "auto" if text == "auto" else (int(text) if text.isdigit() else text)
        if isinstance(size, int) and not isinstance(size, bool):
            value = size
        base = SliceOptions(size=value)
    fields = {k: v for k, v in (("overlap", overlap), ("merge", merge), ("full", full)) if v is not None}
    return SliceOptions(**{**base.__dict__, **fields}) if fields else base


def tile_slicing(cfg: Any, task: Task) -> SliceOptions | None:
    """How a model trained on tiles (``data.tile``, detection tasks) is validated: whole images in
    slices of the tile size and overlap (``best.pt`` is then chosen on the real task); else None."""
    tile = getattr(cfg.data, "tile", None)
    if not tile or not isinstance(task, DetectionTask):
        return None
    return SliceOptions(size=int(tile), overlap=float(cfg.data.tile_overlap))


def _whole_elsewhere(boxes: torch.Tensor, win: Window) -> torch.Tensor:
    """Which boxes (slice pixels) a slice border cut while the neighbour across it holds them whole:
    they touch that border and their far edge lies inside the strip the neighbour covers."""
    w, h = win.x1 - win.x0, win.y1 - win.y0
    left, top, right, bottom = win.near
    x1, y1, x2, y2 = boxes.unbind(1)
    cut = torch.zeros(len(boxes), dtype=torch.bool)
    if left:
        cut |= (x1 <= EDGE_PX) & (x2 <= left - EDGE_PX)
    if top:
        cut |= (y1 <= EDGE_PX) & (y2 <= top - EDGE_PX)
    if right:
        cut |= (x2 >= w - EDGE_PX) & (x1 >= w - right + EDGE_PX)
    if bottom:
        cut |= (y2 >= h - EDGE_PX) & (y1 >= h - bottom + EDGE_PX)
    return cut


def _intersection_over_smaller(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) intersection area / the smaller box's area (1 when one box holds the other)."""
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(1), (b[:, 2:] - b[:, :2]).prod(1)
    return inter / torch.min(area_a[:, None], area_b[None, :]).clamp(min=1e-6)


def _groups(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, opts: SliceOptions) -> list[list[int]]:
    """Indices of each merged object, best score first; its first index leads."""
    if opts.merge == "nms":
        return [[i] for i in class_wise_nms(boxes, scores, labels, opts.merge_iou).tolist()]
    order = torch.argsort(scores, descending=True)
    match = (_intersection_over_smaller(boxes[order], boxes[order]) >= opts.merge_iou) \
        & (labels[order][:, None] == labels[order][None, :])
    taken = torch.zeros(len(order), dtype=torch.bool)
    groups = []
    for i in range(len(order)):  # greedy: the best free box takes every free box it matches
        if taken[i]:
            continue
        members = torch.nonzero(match[i] & ~taken).flatten()
        taken[members] = True
        taken[i] = True
        groups.append([int(order[i])] + [int(order[m]) for m in members.tolist() if m != i])
    return groups


def merge_detections(parts: Sequence[tuple[Window, Detections]], image_hw: tuple[int, int], opts: SliceOptions,
                     max_det: int = _DEFAULT_MAX_DET) -> Detections:
    """One frame's detections from its windows' (boxes in window pixels): cut duplicates dropped,
    overlaps merged, at most ``max_det`` best first; instance masks pasted into the frame."""
    kept = [(win, d[~_whole_elsewhere(d.boxes, win)]) for win, d in parts]
    kept = [(win, d) for win, d in kept if len(d)]
    if not kept:
        empty = Detections.empty()
        if any(d.masks is not None for _, d in parts):  # a mask model's detections keep their (0, H, W) masks
            empty.masks = torch.zeros((0, *image_hw), dtype=torch.bool)
        return empty
    pool = Detections.merge([Detections(d.boxes, d.scores, d.labels, None, None, d.data).offset(win.x0, win.y0)
                             for win, d in kept])
    origin = [(w, d, k) for w, d in kept for k in range(len(d))]  # pool row -> its window, detections, row
    groups = _groups(pool.boxes, pool.scores, pool.labels, opts)[:max_det]
    out = pool[[g[0] for g in groups]]
    out.boxes = torch.stack([torch.cat([pool.boxes[g, :2].min(0).values, pool.boxes[g, 2:].max(0).values])
                             for g in groups]) if groups else out.boxes
    if any(d.masks is not None for _, d in kept):
        out.masks = _paste_masks(groups, origin, image_hw)
    return out


def _paste_masks(groups: list[list[int]], origin: list[tuple[Window, Detections, int]],
                 image_hw: tuple[int, int]) -> torch.Tensor:
    """(G, H, W) bool: each group's members' window masks pasted into the frame, OR-ed."""
    canvas = torch.zeros((len(groups), *image_hw), dtype=torch.bool)
    for g, members in enumerate(groups):
        for row in members:
            win, dets, k = origin[row]
            if dets.masks is not None:
                local = dets.masks[k]
                canvas[g, win.y0:win.y0 + local.shape[0], win.x0:win.x0 + local.shape[1]] |= local
    return canvas


def _own(win: Window) -> tuple[int, int, int, int]:
    """The part of a window whose pixels it decides (x0, y0, x1, y1, frame pixels): the overlaps
    with its neighbours are split at their middle."""
    left, top, right, bottom = win.near
    return (win.x0 + left // 2, win.y0 + top // 2, win.x1 - (right - right // 2), win.y1 - (bottom - bottom // 2))


def merge_semantic(parts: Sequence[tuple[Window, SegmentationMask]], image_hw: tuple[int, int]) -> SegmentationMask:
    """One frame's class mask stitched from its windows' (the whole-frame pass, if any, is not used:
    the slices cover every pixel at full resolution)."""
    tiles = [(w, m) for w, m in parts if (w.x1 - w.x0, w.y1 - w.y0) != (image_hw[1], image_hw[0]) or len(parts) == 1]
    mask = np.zeros(image_hw, np.uint8)
    sums: np.ndarray | None = None
    counts: np.ndarray | None = None
    for win, part in tiles:
        x0, y0, x1, y1 = _own(win)
        piece = part.mask[y0 - win.y0:y1 - win.y0, x0 - win.x0:x1 - win.x0]
        mask[y0:y1, x0:x1] = piece
        if part.scores is not None:
            k = len(part.scores)
            n = np.bincount(piece.ravel(), minlength=k)[:k].astype(np.float64)
            sums = (0 if sums is None else sums) + n * part.scores
            counts = (0 if counts is None else counts) + n
    scores = None if sums is None else (sums / np.maximum(counts, 1)).astype(np.float32)
    return SegmentationMask(mask, scores, parts[0][1].extra_background)


def merge_predictions(parts: Sequence[tuple[Window, Prediction]], image_hw: tuple[int, int], opts: SliceOptions,
                      options: dict[str, Any]) -> Prediction:
    """One frame's :class:`Prediction` from its windows' (``options``: the postprocess options)."""
    first = parts[0][1]
    out = Prediction()
    if first.detections is not None:
        out.detections = merge_detections([(w, p.detections) for w, p in parts], image_hw, opts,
                                          int(options.get("max_det") or _DEFAULT_MAX_DET))
    if first.semantic is not None:
        out.semantic = merge_semantic([(w, p.semantic) for w, p in parts], image_hw)
    if first.presence is not None:
        scores = np.max(np.stack([p.presence.scores for _, p in parts]), axis=0)
        threshold = options.get("presence_conf")
        threshold = _DEFAULT_PRESENCE if threshold is None else float(threshold)
        out.presence = Presence(np.nonzero(scores >= threshold)[0], scores)
    return out


class SlicedPredictor:
    """A :class:`Predictor` whose every frame is predicted slice by slice and merged (module doc);
    any other attribute is the wrapped predictor's."""

    def __init__(self, predictor: Predictor, options: SliceOptions) -> None:
        if not {"detections", "semantic"} & set(predictor.task.parts):
            raise CvappsError(f"--slice: {predictor.task.describe()} labels whole images; slicing is for "
                              "detection and segmentation models")
        self.predictor, self.options = predictor, options
        self.size = options.side(predictor.imgsz)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def windows(self, image: np.ndarray) -> list[Window]:
        h, w = image.shape[:2]
        return slice_windows(h, w, self.size, self.options.overlap, self.options.full)

    def predict(self, frames: Iterable[Frame], **options: Any) -> Iterator[tuple[Frame, Prediction]]:
        """Yield ``(frame, prediction)`` in input order, as :meth:`Predictor.predict` does."""
        check_options(options)
        pending: deque[tuple[Frame, list[Window]]] = deque()  # frames sliced, in order (filled by the prefetch thread)

        def slices() -> Iterator[Frame]:
            for frame in frames:
                windows = self.windows(frame.image)
                pending.append((frame, windows))
                for w in windows:
                    yield Frame(frame.image[w.y0:w.y1, w.x0:w.x1], frame.source, frame.index, frame.timestamp,
                                frame.stream, frame.frame_index)

        done: list[Prediction] = []
        for _, prediction in self.predictor.predict(slices(), **options):
            done.append(prediction)
            frame, windows = pending[0]
            if len(done) == len(windows):
                pending.popleft()
                t0 = time.perf_counter()
                merged = merge_predictions(list(zip(windows, done)), frame.image.shape[:2], self.options, options)
                self.predictor.timings["postprocess"] += time.perf_counter() - t0
                done = []
                yield frame, merged

    def __call__(self, image: np.ndarray, **options: Any) -> Prediction:
        """Predict one BGR uint8 image, sliced."""
        return next(iter(self.predict([Frame(image, "<array>")], **options)))[1]
