"""COCO's encodings of one box, one score and one mask: the rules every COCO writer shares.

Kept apart from :mod:`cvapps.formats.coco` and importing nothing from cvapps, so that the prediction
structures (:mod:`cvapps.structures`) can use them while :mod:`cvapps.formats.coco` may use the
structures.

* boxes: xyxy -> ``[x, y, w, h]`` rounded to 0.01 px, negative sizes clamped to 0 (:func:`box_to_coco`);
* scores: rounded to 1e-5 (:func:`round_score`);
* masks: pycocotools compressed RLE with ``counts`` as ``str`` (:func:`mask_to_rle` / :func:`rle_to_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def box_to_coco(xyxy: Sequence[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` -> ``[x, y, w, h]`` rounded to 0.01 px (negative sizes become 0)."""
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return [round(x1, 2), round(y1, 2), round(max(0.0, x2 - x1), 2), round(max(0.0, y2 - y1), 2)]


def round_score(score: float) -> float:
    return round(float(score), 5)


def mask_to_rle(binary: np.ndarray) -> dict[str, Any]:
    """HxW bool/uint8 -> compressed RLE ``{"size": [H, W], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(binary).astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def compressed_rle(segm: Any, height: int, width: int) -> dict[str, Any]:
    """Polygons, uncompressed or compressed RLE -> compressed RLE as pycocotools takes it."""
    if isinstance(segm, list):
        if not segm:
            return mask_utils.encode(np.zeros((height, width), np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, height, width)
    counts = segm["counts"]
    return {"size": segm["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (polygons, uncompressed or compressed RLE) -> HxW bool mask."""
    return mask_utils.decode(compressed_rle(segm, height, width)).astype(bool)
