"""Training on tiles (``data.tile: SIZE``, ``data.tile_overlap``): every image larger than SIZE is
cut into overlapping SIZE x SIZE tiles (:func:`cvapps.data.windows.slice_windows`), each a training
item of its own, cropped on the fly when the item is read; smaller images stay whole items.

A tile's boxes are clipped to it and kept when at least :data:`MIN_VISIBLE` of the box lies in the
tile (albumentations' ``Crop`` with ``min_visibility``); a mask is cropped with its image. Validation
runs on the whole images through the sliced predictor (:func:`cvapps.engine.slicing.tile_slicing`).
"""

from __future__ import annotations

from collections.abc import Sequence

import importlib

import numpy as np

from cvapps.data.windows import Window, slice_windows
from cvapps.formats.report import ImageRecord

MIN_VISIBLE = 0.5  # "most of the box lies in the tile"


def tile_items(records: Sequence[ImageRecord], tile: int | None, overlap: float) -> list[tuple[int, Window | None]]:
    """``(record index, tile window or None: the whole image)`` of every training item."""
    if not tile:
        return [(i, None) for i in range(len(records))]
    items: list[tuple[int, Window | None]] = []
    for i, rec in enumerate(records):
        if rec.width <= tile and rec.height <= tile:
            items.append((i, None))
        else:
            items += [(i, w) for w in slice_windows(rec.height, rec.width, tile, overlap)]
    return items


def crop_tile(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, window: Window,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """``window`` of ``image`` (and ``mask``) with its boxes (xyxy, tile pixels) and their labels."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = min(window.x0, w), min(window.y0, h), min(window.x1, w), min(window.y1, h)  # a resized file
    # Imported here, not at the top: only training reads tiles, and prediction start-up would pay ~0.5 s.
    A = importlib.import_module("albumentations")  # noqa: N806 - albumentations' usual alias
    crop = A.Compose([A.Crop(x_min=x0, y_min=y0, x_max=x1, y_max=y1)],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=MIN_VISIBLE,
                                              clip=True))
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)  # albumentations refuses coordinates outside the image
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    kwargs = {"image": image, "bboxes": boxes[kept], "labels": np.asarray(labels, np.int64).reshape(-1)[kept]}
    if mask is not None:
        kwargs["mask"] = mask
    out = crop(**kwargs)
    return (out["image"], np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
            np.asarray(out["labels"], np.int64).reshape(-1), out.get("mask"))
