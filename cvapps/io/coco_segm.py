"""COCO "segm" results for semantic masks: one entry per image and (non-background) class present.

Each entry is ``{"image_id", "category_id", "segmentation": {"size": [H, W], "counts": str},
"score", "file_name"}`` with compressed RLE from pycocotools (``counts`` decoded to ``str`` so the
file is JSON), which ``pycocotools.COCO.loadRes`` accepts and ``mask.decode`` turns back into the
exact predicted mask. ``score`` is the mean softmax probability of that class over its pixels.

When no pixel of any class was predicted in any image, the list would be ``[]``, which
pycocotools' ``loadRes`` rejects (it reads ``anns[0]``). Sinks then write one
:func:`placeholder_entry` instead: an empty mask with score 0, which ``loadRes`` accepts and which
cannot change any AP (a lowest-score detection with no pixels matches nothing, and interpolated
precision at every recall already reached is unchanged). :func:`load_results` reads both forms.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from cvapps.data.augment import IGNORE_INDEX


def mask_to_rle(binary: np.ndarray) -> dict[str, Any]:
    """HxW bool/uint8 -> compressed RLE ``{"size": [H, W], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_to_coco(mask: np.ndarray, scores: np.ndarray | None, image_id: int, category_ids: Sequence[int],
                 background: int = 0, file_name: str | None = None) -> list[dict[str, Any]]:
    """One class-index mask (HxW, class index per pixel) -> COCO result entries, one per class present.

    category_ids[c]: COCO category id of class index c. Background and 255 (ignore) are skipped.
    """
    entries = []
    for c in np.unique(mask).tolist():
        if c == background or c == IGNORE_INDEX or c >= len(category_ids):
            continue
        entry = {"image_id": int(image_id), "category_id": int(category_ids[c]),
                 "segmentation": mask_to_rle(mask == c),
                 "score": round(float(scores[c]) if scores is not None else 1.0, 5)}
        if file_name is not None:
            entry["file_name"] = file_name
        entries.append(entry)
    return entries


def placeholder_entry(image_id: int, height: int, width: int, category_id: int,
                      file_name: str | None = None) -> dict[str, Any]:
    """The score-0, zero-pixel entry written when nothing at all was predicted (see module doc)."""
    entry = {"image_id": int(image_id), "category_id": int(category_id),
             "segmentation": mask_to_rle(np.zeros((height, width), np.uint8)), "score": 0.0}
    if file_name is not None:
        entry["file_name"] = file_name
    return entry


def results_to_json(entries: list[dict[str, Any]]) -> str:
    """The results list as JSON text (``[]`` when empty)."""
    return json.dumps(entries, separators=(",", ":"))


def load_results(coco_gt, results: str | Path | list[dict[str, Any]]):
    """``coco_gt.loadRes(results)`` that also accepts an empty result list.

    pycocotools fails on ``[]`` (IndexError on ``anns[0]``); for that case we return a COCO object
    with the ground truth's images and categories and no annotations, which COCOeval accepts.
    """
    from pycocotools.coco import COCO

    anns = json.loads(Path(results).read_text(encoding="utf-8")) if isinstance(results, (str, Path)) else results
    if anns:
        return coco_gt.loadRes(copy.deepcopy(anns))
    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                   "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])), "annotations": []}
    res.createIndex()
    return res
