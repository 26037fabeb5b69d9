"""The one COCO sink: detections, masks and frames of any source -> a COCO dataset file (and a results list).

* ``path`` (``predictions_coco.json``): ``{"info", "images", "annotations", "categories"}``; images
  from :class:`~cvapps.formats.coco.ImageIndex` (the one image-id and file-name rule; video frames
  also carry ``frame_index`` and ``timestamp``), annotations carry ``score``:
  each prediction part's COCO form (``to_coco``): detections -> ``bbox`` [x, y, w, h] + ``area`` (box
  area; with instance masks also an RLE ``segmentation``, and ``area`` is the mask's pixel count;
  tracked: ``track_id``); a class mask -> one RLE ``segmentation`` per class present + ``bbox`` +
  ``area``; a classification -> no annotation (images only).
* video and stream frames: a ``videos`` list, and ``video_id`` / ``frame_id`` on their images
  (:class:`~cvapps.formats.coco.VideoIndex`: the TAO / CocoVID layout).
* ``results_path`` (``predictions.json``), if given: the COCO results list of the same predictions
  (bbox results, or segm results with RLE), or the one empty-result placeholder when nothing was
  found (:func:`cvapps.formats.coco.empty_results`).

File names: a name that is not valid UTF-8 (its undecodable bytes held by Python as lone surrogates,
``errors="surrogateescape"``) is written reversibly, each byte 0xXY as the JSON escape ``\\udcXY``
(the file stays ASCII): ``os.fsencode(json.load(f)["images"][i]["file_name"])`` is the real file's
name again (:data:`cvapps.formats.coco.FILE_NAME_RULE`). CSV and JSON lines, meant for reading,
write the lossy ``bad\\xffname.png`` instead.

Categories: ``category_ids[i]`` is the COCO id of class i (default i + 1); a class named
``background`` with id 0 (segmentation) gets no category. With ``gt`` (``--coco-gt``) ids follow the
ground truth: images matched by file_name, categories by name; unmatched frames are left out.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from pycocotools import mask as mask_utils

from cvapps.formats.coco import (
    ImageIndex,
    VideoIndex,
    dumps,
    empty_results,
    gt_category_ids,
)
from cvapps.io.sinks.base import StagedSink
from cvapps.structures import Frame, Prediction


class CocoSink(StagedSink):
    """See the module doc. ``index``: the run's :class:`~cvapps.formats.coco.ImageIndex` (shared by
    every COCO-writing sink of a run; file names relative to its ``root``); default
    ``ImageIndex(None, gt)``. ``info``: the dataset's ``info`` (default a short description)."""

    def __init__(self, path: str | Path, class_names: Sequence[str], category_ids: Sequence[int] | None = None, *,
                 results_path: str | Path | None = None, gt: dict[str, Any] | None = None,
                 index: ImageIndex | None = None, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.results_path = Path(results_path) if results_path is not None else None
        self.class_names = list(class_names)
        self.category_ids = list(category_ids) if category_ids else list(range(1, len(self.class_names) + 1))
        if gt is not None:
            self.category_ids, missing = gt_category_ids(gt, self.class_names, self.category_ids)
            if missing:
                print(f"warning: classes {missing} are not in --coco-gt's categories; they keep the model's ids",
                      file=sys.stderr)
        self.index = index if index is not None else ImageIndex(None, gt)
        self.info = info or {"description": "cvapps predictions"}
        self.images: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self._ids: set[int] = set()
        self.videos = VideoIndex()  # the "videos" list: frames carry video_id and frame_id

    @property
    def categories(self) -> list[dict[str, Any]]:
        return [{"id": cid, "name": name, "supercategory": ""} for cid, name in zip(self.category_ids, self.class_names)
                if not (cid == 0 and name == "background")]

    def write(self, frame: Frame, prediction: Prediction) -> None:
        h, w = frame.image.shape[:2]
        extra = {}
        if frame.is_video:
            extra = {"frame_index": frame.index, "timestamp": round(frame.timestamp, 4),
                     **(self.videos.lookup(frame, w, h) or {})}
        image = self.index.lookup(frame, w, h, **extra)
        if image is None:
            return  # not in --coco-gt (counted by the index)
        if image["id"] not in self._ids:
            self._ids.add(image["id"])
            self.images.append(image)
        # boxes, then class masks, under the one image id; a classification adds no annotation
        self.results += prediction.to_coco(image["id"], self.category_ids)

    def dataset(self) -> dict[str, Any]:
        """The dataset dict: images, categories and annotations (with score)."""
        anns = []
        for i, r in enumerate(self.results, 1):
            ann = {"id": i, **r, "iscrowd": 0}
            if "segmentation" in r:
                if "bbox" not in r:  # a class mask: its box is the mask's
                    ann["bbox"] = [round(float(v), 2) for v in mask_utils.toBbox(r["segmentation"])]
                ann["area"] = float(mask_utils.area(r["segmentation"]))
            else:
                ann["area"] = round(r["bbox"][2] * r["bbox"][3], 2)
            anns.append(ann)
        videos = {"videos": self.videos.videos} if self.videos.videos else {}
        return {"info": self.info, "licenses": [], **videos, "images": self.images, "annotations": anns,
                "categories": self.categories}

    def results_for_file(self) -> list[dict[str, Any]]:
        """The results list; the empty-result placeholder when nothing was found in any image."""
        if self.results or not self.images or not self.categories:
            return self.results
        first = self.images[0]
        return empty_results(first["id"], self.categories[0]["id"], first["height"], first["width"])

    @property
    def targets(self) -> list[Path]:
        return [p for p in (self.results_path, self.path) if p is not None]

    def prepare(self) -> None:
        if self.results_path is not None:
            self.stage_text(self.results_path, dumps(self.results_for_file()))
        self.stage_text(self.path, dumps(self.dataset()))
        if self.index.unmatched:
            print(f"warning: {self.index.unmatched} images are not in --coco-gt (matched by file_name) and were "
                  f"left out of the JSON files, e.g. {self.index.unmatched_example}", file=sys.stderr)
