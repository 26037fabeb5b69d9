"""COCO JSON: detection results and full dataset files with scores.

Formats (https://cocodataset.org/#format-data and #format-results):

* results list (``predictions.json``): ``[{"image_id", "category_id", "bbox": [x, y, w, h]
  absolute pixels, "score"}, ...]``, what ``COCO.loadRes`` and COCOeval read;
* dataset file (``predictions_coco.json``): ``{"images", "categories", "annotations"}`` where each
  annotation also carries ``score``, which ``pycocotools.COCO()`` and labelling tools import.

COCO mAP lives in :mod:`cvapps.metrics.coco`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from cvapps.checkpoint import atomic_write_text
from cvapps.errors import DataError
from cvapps.structures import Detections, Frame


def detections_to_results(det: Detections, image_id: int, category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One image's Detections (xyxy original pixels, 0-based labels) -> COCO result dicts.

    bbox is ``[x, y, w, h]`` in absolute pixels rounded to 0.01 px, score to 1e-5: the same
    rounding in every writer, so ``cvapps val`` and a COCOeval run on ``predictions.json`` agree.
    """
    out = []
    for (x1, y1, x2, y2), score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
        out.append({"image_id": int(image_id), "category_id": int(category_ids[label]),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5)})
    return out


# ---------------------------------------------------------------------------------------------
# export

def load_coco_gt(path: str | Path) -> dict[str, Any]:
    """The images and categories of a COCO dataset file (``--coco-gt``), checked like a dataset."""
    from cvapps.data.check import read_coco_json

    return read_coco_json(Path(path))


class FileNameMatcher:
    """Matches predicted files to a ground-truth file's ``images`` by ``file_name``.

    A frame matches an image when its path ends with the image's ``file_name`` (path components,
    so ``a/b.jpg`` matches ``.../a/b.jpg`` but not ``.../xa/b.jpg``); the longest match wins.
    Ids are never derived from file stems.
    """

    def __init__(self, images: list[dict[str, Any]]) -> None:
        self.by_name: dict[str, list[dict[str, Any]]] = {}
        for im in images:
            if isinstance(im, dict) and isinstance(im.get("file_name"), str) and "id" in im:
                self.by_name.setdefault(PurePosixPath(im["file_name"].replace("\\", "/")).name, []).append(im)

    def match(self, source: str) -> dict[str, Any] | None:
        parts = PurePosixPath(str(source).replace("\\", "/")).parts
        if not parts:
            return None
        best, best_len = None, 0
        for im in self.by_name.get(parts[-1], []):
            want = PurePosixPath(im["file_name"].replace("\\", "/")).parts
            if len(want) <= len(parts) and tuple(parts[-len(want):]) == want and len(want) > best_len:
                best, best_len = im, len(want)
        return best


class CocoJsonSink:
    """Writes ``predictions.json`` (results list) and ``predictions_coco.json`` (dataset file) on close.

    A run that detects nothing at all writes one score-0 placeholder in ``predictions.json`` (see
    :meth:`results_for_file`) so that pycocotools can load it; ``predictions_coco.json`` has no
    annotations then.

    Without ``gt``: image ids are 1..N in the order frames arrive, category ids are the
    checkpoint's. With ``gt`` (a COCO dataset dict, ``--coco-gt``): frames are matched to its
    images by ``file_name`` and take their ids; categories are matched by name. Frames that are
    not in ``gt`` are left out of both files (counted in :attr:`unmatched`).
    """

    def __init__(self, out_dir: str | Path, class_names: Sequence[str], category_ids: Sequence[int],
                 gt: dict[str, Any] | None = None, source_root: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)
        self.source_root = Path(source_root) if source_root is not None and Path(source_root).is_dir() else None
        self.gt = gt
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.unmatched: list[str] = []
        self._seen: set[int] = set()
        self.matcher = None
        if gt is not None:
            self.matcher = FileNameMatcher(gt["images"])
            gt_cats = {c["name"]: c["id"] for c in gt["categories"] if isinstance(c, dict) and "name" in c and "id" in c}
            missing = [n for n in self.class_names if n not in gt_cats]
            if len(missing) == len(self.class_names):
                raise DataError(f"--coco-gt: none of the model's classes {self.class_names} are categories of that file "
                                f"({sorted(gt_cats)})")
            if missing:
                print(f"warning: classes {missing} are not in --coco-gt's categories; they keep the model's ids",
                      file=sys.stderr)
            self.category_ids = [gt_cats.get(n, cid) for n, cid in zip(self.class_names, self.category_ids)]

    def _file_name(self, frame: Frame) -> str:
        src = Path(frame.source)
        if self.source_root is not None:
            try:
                return src.resolve().relative_to(self.source_root.resolve()).as_posix()
            except (ValueError, OSError):
                pass
        return src.name

    def write(self, frame: Frame, prediction: Detections) -> None:
        h, w = frame.image.shape[:2]
        if self.matcher is not None:
            im = self.matcher.match(frame.source)
            if im is None:
                self.unmatched.append(frame.source)
                return
            image_id, file_name = int(im["id"]), im["file_name"]
        else:
            image_id, file_name = len(self.images) + 1, self._file_name(frame)
        if image_id not in self._seen:
            self._seen.add(image_id)
            self.images.append({"id": image_id, "file_name": file_name, "width": int(w), "height": int(h)})
        self.results += detections_to_results(prediction, image_id, self.category_ids)

    def dataset(self) -> dict[str, Any]:
        """The ``predictions_coco.json`` dict: images, categories and annotations with score."""
        anns = []
        for i, r in enumerate(self.results, 1):
            x, y, bw, bh = r["bbox"]
            anns.append({"id": i, "image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"],
                         "area": round(bw * bh, 2), "iscrowd": 0, "score": r["score"]})
        cats = [{"id": cid, "name": n} for n, cid in zip(self.class_names, self.category_ids)]
        return {"info": {"description": "cvapps detections"}, "licenses": [], "images": self.images,
                "categories": cats, "annotations": anns}

    @property
    def predictions_path(self) -> Path:
        return self.out_dir / "predictions.json"

    @property
    def dataset_path(self) -> Path:
        return self.out_dir / "predictions_coco.json"

    def results_for_file(self) -> list[dict[str, Any]]:
        """The results list; when nothing was detected in any image, one score-0, zero-size box.

        pycocotools' ``loadRes`` rejects ``[]`` (it reads ``anns[0]``); a zero-size box with the
        lowest score matches nothing and cannot change AP, so the file stays loadable and exact.
        """
        if self.results or not self.images:
            return self.results
        return [{"image_id": self.images[0]["id"], "category_id": self.category_ids[0],
                 "bbox": [0.0, 0.0, 0.0, 0.0], "score": 0.0}]

    def close(self) -> None:
        atomic_write_text(self.predictions_path, json.dumps(self.results_for_file()))
        atomic_write_text(self.dataset_path, json.dumps(self.dataset()))
        if self.unmatched:
            print(f"warning: {len(self.unmatched)} images are not in --coco-gt (matched by file_name) and were left "
                  f"out of the JSON files, e.g. {self.unmatched[0]}", file=sys.stderr)
