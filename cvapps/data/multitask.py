"""The multi-task dataset: one image, its boxes and its class-index mask through one augmentation pass.

A detection split (COCO or YOLO layout, checked by :mod:`cvapps.data.check`) gives the images and
boxes; masks come from ``ROOT/masks/<split>/<stem>.png`` (as segmentation reads them) or, without a
masks folder, from the COCO polygons/RLE of ``ROOT/annotations/<split>.json``. Segmentation class
``c`` is detection class ``c - 1`` (0 is the background), the rule :mod:`cvapps.data.segmentation`
uses for COCO categories.

Missing labels are *unknown*, not negative:

* an image without a mask (no PNG, or a COCO object without a segmentation) gets a mask of 255 =
  ignore everywhere, so it adds nothing to the segmentation loss or mIoU;
* an image that has a mask but is not in the detection annotations (a file in ``images/<split>/``
  that ``annotations/<split>.json`` does not list) gets ``has_boxes=False``: no detection or
  presence loss, and no part in the COCO evaluation.

Items are ``(image uint8 (C, S, S), target)`` with ``target = {"boxes": (N, 4) xyxy float32
network px, "labels": (N,) int64, "mask": (S, S) int64 (255 = ignore), "has_boxes": bool,
"image_id": int | None, "meta": LetterboxMeta}``, or None for an unreadable image file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from cvapps.data.augment import IGNORE_INDEX, SamplePipeline
from cvapps.data.segmentation import SegSample, rasterize_coco, scan_split
from cvapps.errors import ImageReadError
from cvapps.formats.masks import read_mask
from cvapps.formats.report import DetectionSplit, ImageRecord
from cvapps.io.images import read_image


@dataclass
class MultiItem:
    """One image: its detection record (None: no box labels) and its mask source (None: no mask)."""

    path: Path
    record: ImageRecord | None
    mask: SegSample | None


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


def find_masks(root: Path, split: str, num_seg_classes: int, category_ids: list[int]
               ) -> tuple[dict[str, SegSample], list[tuple[str, str]]]:
    """Mask sources of one split by resolved image path, and the bad masks skipped as (path, reason).

    An image simply lacking a mask is not a problem here (it trains without one), so those
    "no mask" reasons are left out of the report. No masks at all for the split: an empty dict.
    """
    if not (root / "images" / split).is_dir() or not ((root / "masks" / split).is_dir()
                                                      or (root / "annotations" / f"{split}.json").is_file()):
        return {}, []
    skipped: list[tuple[str, str]] = []
    samples = scan_split(root, split, num_seg_classes, [0] + list(category_ids), skipped)
    skipped = [(p, r) for p, r in skipped if not r.startswith("no mask ")]
    return {_key(s.image): s for s in samples}, skipped


def combine(split: DetectionSplit, masks: dict[str, SegSample], mask_only: bool = True) -> list[MultiItem]:
    """The split's detection records, each with its mask if there is one; ``mask_only``: also the
    images that have a mask but no detection entry (``has_boxes=False``)."""
    items, seen = [], set()
    for rec in split.records:
        key = _key(rec.path)
        seen.add(key)
        sample = masks.get(key)
        if sample is not None and sample.mask is None:
            # COCO-rasterised mask: known only when every object of the image has a segmentation.
            if sum(1 for _, _, crowd in sample.anns if not crowd) < len(rec.boxes):
                sample = None
        items.append(MultiItem(Path(rec.path), rec, sample))
    if mask_only:
        items += [MultiItem(Path(s.image), None, s) for key, s in sorted(masks.items()) if key not in seen]
    return items


def load_mask(sample: SegSample | None, height: int, width: int) -> np.ndarray | None:
    """HxW uint8 class-index mask of ``sample`` (None when the image has no mask)."""
    if sample is None:
        return None
    mask = read_mask(sample.mask) if sample.mask is not None else rasterize_coco(sample.anns, height, width)
    if mask.shape != (height, width):  # changed on disk since the dataset was built
        raise ImageReadError(sample.mask or sample.image, "mask size differs from the image")
    return mask.astype(np.uint8)


class MultiTaskDataset(Dataset):
    """Images with boxes and/or masks; see the module docstring for the items."""

    def __init__(self, items: list[MultiItem], pipeline: SamplePipeline) -> None:
        self.items, self.pipeline = items, pipeline

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """(BGR image, mask or None, boxes (N, 4) xyxy original px, labels (N,)) of item i."""
        item = self.items[i]
        image = read_image(item.path)
        h, w = image.shape[:2]
        boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        if item.record is not None:
            rec = item.record
            boxes, labels = rec.boxes, rec.labels
            if (h, w) != (rec.height, rec.width) and len(boxes):
                # The file differs from its annotation's size (data check reports it): scale the boxes.
                sx, sy = w / rec.width, h / rec.height
                boxes = boxes * [sx, sy, sx, sy]
        return image, load_mask(item.mask, h, w), boxes, labels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        try:
            image, mask, boxes, labels = self._load(i)
        except ImageReadError as exc:
            print(f"skipped {exc}", file=sys.stderr)
            return None
        if mask is None:
            mask = np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
        out = self.pipeline(image, mask=mask, boxes=boxes, labels=labels)
        rec = self.items[i].record
        return out["image"], {"boxes": out["boxes"], "labels": out["labels"], "mask": out["mask"],
                              "has_boxes": rec is not None, "image_id": rec.image_id if rec is not None else None,
                              "meta": out["meta"]}

    def eval_items(self) -> Iterator[tuple[str, Callable[[], tuple[np.ndarray, dict[str, Any]]]]]:
        """``(name, load)`` per item; ``load()`` -> (BGR image, {"image_id": COCO id or None,
        "mask": HxW uint8 or None, "labels": sorted present classes or None}) in original pixels."""
        def load(i: int) -> tuple[np.ndarray, dict[str, Any]]:
            image, mask, _, labels = self._load(i)
            rec = self.items[i].record
            return image, {"image_id": rec.image_id if rec is not None else None, "mask": mask,
                           "labels": sorted(set(labels.tolist())) if rec is not None else None}

        for i, item in enumerate(self.items):
            yield str(item.path), (lambda i=i: load(i))
