"""Detection datasets (any layout of :data:`cvapps.data.check.LAYOUTS`: COCO, YOLO txt, Pascal VOC,
CVAT for images, LabelMe) through the shared sample pipeline.

Each item is ``(image, target)``:

* ``image``: uint8 tensor (C, imgsz, imgsz), RGB, letterboxed (and augmented in training);
* ``target``: ``{"boxes": float32 (N, 4) xyxy in network-input pixels, "labels": int64 (N,)
  0-based class indices, "image_id": int (the dataset's id), "meta": LetterboxMeta}``;

or None for an image file that cannot be read (reported on stderr; the task's collate skips it).
Class index ``i`` is COCO category id ``category_ids[i]`` and name ``class_names[i]``.
Loading applies the ``data check`` rules (:mod:`cvapps.data.check`) and prints their counts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cvapps.data.augment import SamplePipeline, build_augment
from cvapps.data.check import load_detection_split
from cvapps.errors import ImageReadError
from cvapps.formats.report import DetectionSplit, ImageRecord
from cvapps.io.images import read_image


class DetectionDataset(Dataset):
    """One split of a detection dataset; see the module docstring for what items look like."""

    def __init__(self, split: DetectionSplit, pipeline: SamplePipeline) -> None:
        self.split, self.pipeline = split, pipeline

    @classmethod
    def from_root(cls, root: str | Path, split: str, imgsz: int, *, augment: list[dict] | None = None,
                  in_channels: int = 3, resize_mode: str = "letterbox", layout: str = "auto",
                  class_names: list[str] | None = None) -> DetectionDataset:
        """Load and check ``split`` of ``root``; ``augment``: albumentations specs (training only)."""
        checked = load_detection_split(root, split, layout=layout, class_names=class_names)
        aug = build_augment(augment, boxes=True) if augment else None
        return cls(checked, SamplePipeline(imgsz, resize_mode, in_channels, aug))

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
        return len(self.split.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        rec = self.split.records[i]
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
        out = self.pipeline(image, boxes=boxes, labels=rec.labels)
        return out["image"], {"boxes": out["boxes"], "labels": out["labels"], "image_id": rec.image_id,
                              "meta": out["meta"]}
