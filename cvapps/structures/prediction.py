"""The prediction of one image: :class:`Prediction`, one container with optional parts: ``detections``
(:class:`Detections`), ``semantic`` (:class:`SegmentationMask`), ``classification``
(:class:`Classification`), ``presence`` (:class:`Presence`) and ``counts`` (:class:`Counts`).

Every task's postprocess returns one Prediction per image; a multitask model's has several parts set.
Consumers read the part they need (``pred.detections is not None``); this module is the only place
that checks the parts' types.

Each part owns its two serialisations:

* ONE JSON form, ``to_json(names)`` / ``from_json(d)``, used by JSON lines, the Ray manifest and
  ``Result.to_dict``. It is lossless: floats unrounded (a float32 written as a Python float reads
  back the same), masks as COCO compressed RLE, full per-class score vectors. The parts' keys never
  collide, so :meth:`Prediction.to_json` is one flat object, the union of its parts' dicts:

  - detections: ``boxes`` [[x1, y1, x2, y2]] (original pixels), ``scores``, ``labels``, ``names``
    [, ``masks`` [RLE] + ``mask_size`` [H, W]] [, ``track_ids``] [, ``box_data`` {key: {dtype, values}}];
  - semantic: ``size`` [H, W], ``classes`` [{label (= mask value), name, pixels, score, rle}] (every
    value but background 0; 255 is ``"ignore"``) [, ``class_scores`` [K]] [, ``extra_background``: true];
  - classification: ``label``, ``name``, ``score``, ``topk`` [{label, name, score}];
  - presence: ``present`` [{label, name, score}], ``presence`` [K];
  - counts: ``counts`` {lines, zones} (unrounded, :meth:`Counts.to_json` with ``ndigits=None``).

* ONE COCO form, ``to_coco(image_id, category_ids)``: results entries as ``predictions.json`` holds
  them (boxes, instance masks, class masks), rounded by :mod:`cvapps.formats.coco_encode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cvapps.formats.coco_encode import (
    box_to_coco,
    mask_to_rle,
    rle_to_mask,
    round_score,
)
from cvapps.formats.masks import IGNORE_INDEX
from cvapps.structures.counts import Counts

Json = dict[str, Any]


def class_name(names: Sequence[str], label: int) -> str:
    """``names[label]``, or the label as text when it is past the list."""
    return names[label] if 0 <= label < len(names) else str(label)


def _same(a: Any, b: Any) -> bool:
    """Both None, or arrays/tensors of one dtype, shape and values."""
    if a is None or b is None:
        return a is None and b is None
    a, b = (x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (a, b))
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@dataclass
class Classification:
    """label: class index; score: its probability; topk: [(label, prob), ...] best first."""

    label: int
    score: float
    topk: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.label, self.score = int(self.label), float(self.score)
        self.topk = [(int(k), float(p)) for k, p in self.topk]

    def to_json(self, names: Sequence[str]) -> Json:
        return {"label": self.label, "name": class_name(names, self.label), "score": self.score,
                "topk": [{"label": k, "name": class_name(names, k), "score": p} for k, p in self.topk]}

    @classmethod
    def from_json(cls, d: Json) -> Classification:
        return cls(d["label"], d["score"], [(t["label"], t["score"]) for t in d["topk"]])


@dataclass(eq=False)
class SegmentationMask:
    """mask: HxW uint8 class index per pixel in original image pixels (0 = background, 255 = ignore).

    scores: (K,) float32 per-class mean confidence over the pixels assigned to that class, or None.
    extra_background: the names the mask is read with lack background: value v is ``names[v - 1]``
    (a multitask model's mask, named by its detection classes); else value v is ``names[v]``.
    """

    mask: np.ndarray
    scores: np.ndarray | None = None
    extra_background: bool = False

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 2:
            raise ValueError(f"a segmentation mask must be HxW, got shape {mask.shape}")
        if mask.dtype != np.uint8:  # class indices 0..255 as uint8, whatever the producer made
            if mask.size and (mask.dtype.kind not in "biu" or mask.min() < 0 or mask.max() > 255):
                raise ValueError(f"a segmentation mask holds class indices 0..255, got {mask.dtype} values")
            mask = mask.astype(np.uint8)
        self.mask = mask
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.extra_background = bool(self.extra_background)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SegmentationMask) and _same(self.mask, other.mask)
                and _same(self.scores, other.scores) and self.extra_background == other.extra_background)

    def names_for(self, names: Sequence[str]) -> list[str]:
        """Mask value -> class name, given the model's class names."""
        return ["background", *names] if self.extra_background else list(names)

    def class_score(self, c: int) -> float:
        """Mean confidence of class c's pixels (1.0 when the mask has no scores)."""
        return float(self.scores[c]) if self.scores is not None and c < len(self.scores) else 1.0

    def present(self) -> list[int]:
        """Class values present in the mask, without background (0) and ignore (255)."""
        return [int(c) for c in np.unique(self.mask).tolist() if c not in (0, IGNORE_INDEX)]

    def to_json(self, names: Sequence[str]) -> Json:
        names = self.names_for(names)
        classes = []
        for c in np.unique(self.mask).tolist():
            if c == 0:
                continue
            binary = self.mask == c
            classes.append({"label": c, "name": "ignore" if c == IGNORE_INDEX else class_name(names, c),
                            "pixels": int(binary.sum()), "score": self.class_score(c), "rle": mask_to_rle(binary)})
        out: Json = {"size": list(self.mask.shape), "classes": classes}
        if self.scores is not None:
            out["class_scores"] = self.scores.tolist()
        if self.extra_background:
            out["extra_background"] = True
        return out

    @classmethod
    def from_json(cls, d: Json) -> SegmentationMask:
        h, w = d["size"]
        mask = np.zeros((h, w), np.uint8)
        for c in d["classes"]:
            mask[rle_to_mask(c["rle"], h, w)] = c["label"]
        return cls(mask, d.get("class_scores"), d.get("extra_background", False))

    def to_coco(self, image_id: int, category_ids: Sequence[int]) -> list[Json]:
        """One segm result per class present: ``{"image_id", "category_id", "segmentation" (RLE),
        "score"}``; ``category_ids[i]`` is the COCO id of class i of the model's names. No ``bbox``
        key: pycocotools' ``loadRes`` would then read the list as box results."""
        ids = [0, *category_ids] if self.extra_background else list(category_ids)
        return [{"image_id": int(image_id), "category_id": int(ids[c]), "segmentation": mask_to_rle(self.mask == c),
                 "score": round_score(self.class_score(c))} for c in self.present() if c < len(ids)]


@dataclass(eq=False)
class Detections:
    """Detections for one image (see supervision's ``Detections``).

    boxes: (N, 4) float32, xyxy in original image pixels.
    scores: (N,) float32 confidences in [0, 1].
    labels: (N,) int64 class indices into the checkpoint's class names (0-based, no background).
    masks: (N, H, W) bool instance masks in original image pixels (H, W = the image's size), one per
        box; None for box-only models. Native ultralytics ``-seg`` models fill it.
    track_ids: (N,) int64 track id of each box (>= 1) when a tracker ran (``--track``), else None.
    data: more per-box arrays, each (N, ...), by name.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    track_ids: np.ndarray | None = None
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:  # the one validator: every constructor and slice passes here
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float32).reshape(-1, 4).cpu()
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1).cpu()
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1).cpu()
        n = len(self.boxes)
        if not (n == len(self.scores) == len(self.labels)):
            raise ValueError("boxes, scores and labels must have the same length")
        if self.masks is not None:
            self.masks = torch.as_tensor(self.masks).to(dtype=torch.bool, device="cpu")
            if self.masks.ndim != 3 or len(self.masks) != n:
                raise ValueError(f"masks must be (N, H, W) with N = {n} boxes, got {tuple(self.masks.shape)}")
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            if len(self.track_ids) != n:
                raise ValueError(f"track_ids must be (N,) with N = {n} boxes, got {self.track_ids.shape}")
        self.data = {str(k): np.asarray(v) for k, v in self.data.items()}
        for k, v in self.data.items():
            if v.ndim == 0 or len(v) != n:
                raise ValueError(f"data[{k!r}] must have one entry per box ({n}), got shape {v.shape}")

    def __len__(self) -> int:
        return len(self.boxes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detections) or set(self.data) != set(other.data):
            return False
        pairs = [(self.boxes, other.boxes), (self.scores, other.scores), (self.labels, other.labels),
                 (self.masks, other.masks), (self.track_ids, other.track_ids),
                 *((v, other.data[k]) for k, v in self.data.items())]
        return all(_same(a, b) for a, b in pairs)

    def __getitem__(self, index: Any) -> Detections:
        """The boxes at ``index`` (an int, a slice, a bool mask or an index array) with every per-box
        field sliced alike; an int gives a Detections of one box."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        if isinstance(index, slice):
            np_index: Any = index
            torch_index: Any = index
        else:
            np_index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
            np_index = np_index if np_index.dtype == bool else np_index.astype(np.int64).reshape(-1)
            torch_index = torch.from_numpy(np_index)
        return Detections(self.boxes[torch_index], self.scores[torch_index], self.labels[torch_index],
                          None if self.masks is None else self.masks[torch_index],
                          None if self.track_ids is None else self.track_ids[np_index],
                          {k: v[np_index] for k, v in self.data.items()})

    @classmethod
    def empty(cls) -> Detections:
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))

    @classmethod
    def merge(cls, items: Sequence[Detections]) -> Detections:
        """The boxes of all ``items``, concatenated in order. Optional fields (masks, track ids, data
        keys) must be on all of them or on none (masks of one size)."""
        items = list(items)
        if not items:
            return cls.empty()
        for name in ("masks", "track_ids"):
            if len({getattr(d, name) is None for d in items}) > 1:
                raise ValueError(f"Detections.merge: {name} on some detections only")
        if len({frozenset(d.data) for d in items}) > 1:
            raise ValueError("Detections.merge: the detections have different data keys")
        masks = None
        if items[0].masks is not None:
            if len({tuple(d.masks.shape[1:]) for d in items}) > 1:
                raise ValueError("Detections.merge: instance masks of different sizes")
            masks = torch.cat([d.masks for d in items])
        track_ids = None if items[0].track_ids is None else np.concatenate([d.track_ids for d in items])
        return cls(torch.cat([d.boxes for d in items]), torch.cat([d.scores for d in items]),
                   torch.cat([d.labels for d in items]), masks, track_ids,
                   {k: np.concatenate([d.data[k] for d in items]) for k in items[0].data})

    def offset(self, dx: int, dy: int, image_size: tuple[int, int] | None = None) -> Detections:
        """Boxes shifted by (dx, dy) pixels (a tile's detections -> the whole image's); instance masks
        placed at (dx, dy) into a canvas of ``image_size`` (H, W), which they then need."""
        boxes = self.boxes + torch.tensor([dx, dy, dx, dy], dtype=torch.float32)
        masks = None
        if self.masks is not None:
            if image_size is None:
                raise ValueError("Detections.offset: instance masks need image_size (H, W)")
            (big_h, big_w), (n, h, w), dx, dy = image_size, self.masks.shape, int(dx), int(dy)
            masks = torch.zeros((n, big_h, big_w), dtype=torch.bool)
            y0, x0, y1, x1 = max(0, dy), max(0, dx), min(big_h, dy + h), min(big_w, dx + w)  # a tile may overhang
            if y1 > y0 and x1 > x0:
                masks[:, y0:y1, x0:x1] = self.masks[:, y0 - dy:y1 - dy, x0 - dx:x1 - dx]
        return replace(self, boxes=boxes, masks=masks)

    def scale(self, sx: float, sy: float) -> Detections:
        """Boxes scaled by (sx, sy) (a resized image's detections -> the original's); instance masks
        resized (nearest) to round(H * sy) x round(W * sx)."""
        boxes = self.boxes * torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        masks = None
        if self.masks is not None:
            n, h, w = self.masks.shape
            size = (max(1, round(h * sy)), max(1, round(w * sx)))
            masks = (F.interpolate(self.masks[None].float(), size=size, mode="nearest")[0] > 0.5 if n
                     else torch.zeros((0, *size), dtype=torch.bool))
        return replace(self, boxes=boxes, masks=masks)

    def to_json(self, names: Sequence[str]) -> Json:
        labels = self.labels.tolist()
        out: Json = {"boxes": self.boxes.tolist(), "scores": self.scores.tolist(), "labels": labels,
                     "names": [class_name(names, k) for k in labels]}
        if self.masks is not None:
            out["masks"] = [mask_to_rle(m) for m in self.masks.numpy()]
            out["mask_size"] = list(self.masks.shape[1:])
        if self.track_ids is not None:
            out["track_ids"] = self.track_ids.tolist()
        if self.data:
            out["box_data"] = {k: {"dtype": v.dtype.str, "values": v.tolist()} for k, v in self.data.items()}
        return out

    @classmethod
    def from_json(cls, d: Json) -> Detections:
        masks = None
        if "masks" in d:
            h, w = d["mask_size"]
            masks = np.stack([rle_to_mask(r, h, w) for r in d["masks"]]) if d["masks"] else np.zeros((0, h, w), bool)
        data = {k: np.asarray(v["values"], dtype=np.dtype(v["dtype"])) for k, v in d.get("box_data", {}).items()}
        return cls(np.asarray(d["boxes"], np.float32), np.asarray(d["scores"], np.float32),
                   np.asarray(d["labels"], np.int64), masks, d.get("track_ids"), data)

    def to_coco(self, image_id: int, category_ids: Sequence[int]) -> list[Json]:
        """COCO result dicts ``{"image_id", "category_id", "bbox", "score"}`` (plus ``track_id`` when
        tracked, see :class:`cvapps.formats.coco.VideoIndex`), plus ``"segmentation"`` (compressed
        RLE) per instance when there are masks, so one list serves ``bbox`` and ``segm`` evaluation."""
        out = [{"image_id": int(image_id), "category_id": int(category_ids[label]), "bbox": box_to_coco(box),
                "score": round_score(score)}
               for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())]
        if self.track_ids is not None:
            for result, track_id in zip(out, self.track_ids.tolist()):
                result["track_id"] = int(track_id)
        if self.masks is not None:
            for result, mask in zip(out, self.masks.numpy()):
                result["segmentation"] = mask_to_rle(mask)
        return out


@dataclass(eq=False)
class Presence:
    """Multi-label presence: labels (M,) int64 classes found in the image (probability >= the
    threshold); scores (K,) float32 presence probability of every class."""

    labels: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        labels = self.labels.cpu() if isinstance(self.labels, torch.Tensor) else self.labels
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.scores)):
            raise ValueError(f"presence labels must index the {len(self.scores)} class scores")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Presence) and _same(self.labels, other.labels) and _same(self.scores, other.scores)

    def to_json(self, names: Sequence[str]) -> Json:
        return {"present": [{"label": k, "name": class_name(names, k), "score": float(self.scores[k])}
                            for k in self.labels.tolist()],
                "presence": self.scores.tolist()}

    @classmethod
    def from_json(cls, d: Json) -> Presence:
        return cls([p["label"] for p in d["present"]], d["presence"])


PARTS: dict[str, type] = {"detections": Detections, "semantic": SegmentationMask,
                          "classification": Classification, "presence": Presence}
# the key that says a part is in a prediction's JSON form
_JSON_KEYS = {"detections": "boxes", "semantic": "size", "classification": "label", "presence": "present"}


@dataclass(eq=False)
class Prediction:
    """Everything predicted for one image (see the module doc); a part is None when not predicted."""

    detections: Detections | None = None
    semantic: SegmentationMask | None = None
    classification: Classification | None = None
    presence: Presence | None = None
    counts: Counts | None = None

    def __post_init__(self) -> None:
        for name, kind in (*PARTS.items(), ("counts", Counts)):
            part = getattr(self, name)
            if part is not None and not isinstance(part, kind):
                raise TypeError(f"Prediction.{name} must be a {kind.__name__}, got {type(part).__name__}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prediction) and all(getattr(self, f.name) == getattr(other, f.name)
                                                     for f in fields(self))

    def parts(self) -> dict[str, Any]:
        """The parts that are set, by name, in the order of :data:`PARTS`."""
        return {name: getattr(self, name) for name in PARTS if getattr(self, name) is not None}

    def to_json(self, names: Sequence[str]) -> Json:
        """The one JSON form (see the module doc); ``names``: class index -> name."""
        out: Json = {}
        for part in self.parts().values():
            out.update(part.to_json(names))
        if self.counts is not None:
            out["counts"] = self.counts.to_json(None)
        return out

    @classmethod
    def from_json(cls, d: Json) -> Prediction:
        """The inverse of :meth:`to_json`."""
        parts = {name: PARTS[name].from_json(d) for name, key in _JSON_KEYS.items() if key in d}
        return cls(**parts, counts=Counts.from_json(d["counts"]) if "counts" in d else None)

    def to_coco(self, image_id: int, category_ids: Sequence[int]) -> list[Json]:
        """The COCO results entries of the boxes, then the class masks, under one image id (a
        classification or presence has no COCO results form: nothing)."""
        out = self.detections.to_coco(image_id, category_ids) if self.detections is not None else []
        return out + (self.semantic.to_coco(image_id, category_ids) if self.semantic is not None else [])
