"""Detection datasets (any layout of :data:`cvapps.data.check.LAYOUTS`: COCO, YOLO txt, Pascal VOC,
CVAT for images, LabelMe) through the shared sample pipeline.

Each item is ``(image, target)``:

* ``image``: uint8 tensor (C, imgsz, imgsz), RGB, letterboxed (and augmented in training);
* ``target``: ``{"boxes": float32 (N, 4) xyxy in network-input pixels, "labels": int64 (N,)
  0-based class indices, "image_id": int (the dataset's id), "meta": LetterboxMeta}``;

or None for an image file that cannot be read (reported on stderr; the task's collate skips it).
With ``tile`` (``data.tile``) each image larger than it is several items, one per overlapping tile
(:mod:`cvapps.data.tiles`); ``records`` stay the whole images (evaluation reads those).
Class index ``i`` is COCO category id ``category_ids[i]`` and name ``class_names[i]``.
Loading applies the ``data check`` rules (:mod:`cvapps.data.check`) and prints their counts.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cvapps.data.augment import SamplePipeline, build_augment
from cvapps.data.check import load_detection_split
from cvapps.data.tiles import crop_tile, tile_items
from cvapps.errors import ImageReadError
from cvapps.formats.report import DetectionSplit, ImageRecord
from cvapps.io.images import read_image


class DetectionDataset(Dataset):
    """One split of a detection dataset; see the module docstring for what items look like."""

    def __init__(self, split: DetectionSplit, pipeline: SamplePipeline, tile: int | None = None,
                 tile_overlap: float = 0.2) -> None:
        self.split, self.pipeline = split, pipeline
        self.items = tile_items(split.records, tile, tile_overlap)  # (record, tile window or None)

    @classmethod
    def from_root(cls, root: str | Path, split: str, imgsz: int | Mapping[str, Any], *,
                  augment: list[dict] | None = None, layout: str = "auto",
                  class_names: list[str] | None = None) -> DetectionDataset:
        """Load and check ``split`` of ``root``; ``imgsz``: the network input size, or a task's
        preprocessing dict ``{"imgsz", "resize", "in_channels"}``; ``augment``: albumentations specs
        (training only)."""
        pre = {"imgsz": imgsz} if isinstance(imgsz, int) else dict(imgsz)
        checked = load_detection_split(root, split, layout=layout, class_names=class_names)
        aug = build_augment(augment, boxes=True) if augment else None
        pipeline = SamplePipeline(int(pre["imgsz"]), pre.get("resize", "letterbox"), int(pre.get("in_channels", 3)), aug)
        return cls(checked, pipeline)

    # the class mapping and ground truth of the split
    @property
    def class_names(self) -> list[str]:
        return self.split.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.split.category_ids

    @property
    def records(self) -> list[ImageRecord]:
        return self.split.records

    @property
    def coco_gt(self) -> dict[str, Any]:
        return self.split.gt

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        index, window = self.items[i]
        rec = self.split.records[index]
        try:
            image = read_image(rec.path)
        except ImageReadError as exc:
            print(f"skipped {exc}", file=sys.stderr)
            return None
        boxes = rec.boxes
        if image.shape[:2] != (rec.height, rec.width) and len(boxes):
            # The file differs from its annotation's size (data check reports it): scale the boxes
            # rather than train on misplaced ones.
            sx, sy = image.shape[1] / rec.width, image.shape[0] / rec.height
            boxes = boxes * [sx, sy, sx, sy]
        labels = rec.labels
        if window is not None:
            image, boxes, labels, _ = crop_tile(image, boxes, labels, window)
        out = self.pipeline(image, boxes=boxes, labels=labels)
        return out["image"], {"boxes": out["boxes"], "labels": out["labels"], "image_id": rec.image_id,
                              "meta": out["meta"]}
