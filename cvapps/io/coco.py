"""COCO JSON: detection results, full dataset files with scores, and COCO mAP via pycocotools.

Formats (https://cocodataset.org/#format-data and #format-results):

* results list (``predictions.json``): ``[{"image_id", "category_id", "bbox": [x, y, w, h]
  absolute pixels, "score"}, ...]``, what ``COCO.loadRes`` and COCOeval read;
* dataset file (``predictions_coco.json``): ``{"images", "categories", "annotations"}`` where each
  annotation also carries ``score``, which ``pycocotools.COCO()`` and labelling tools import.

:func:`coco_evaluate` is the one place mAP is computed (``cvapps val`` and training); it runs
pycocotools' COCOeval, so its numbers are COCO's.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

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


def make_coco(gt: dict[str, Any]) -> Any:
    """A ``pycocotools.coco.COCO`` from an in-memory dataset dict (without printing)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"info": {}, "licenses": [], **gt}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_evaluate(gt: dict[str, Any], results: list[dict[str, Any]], class_names: Sequence[str],
                  category_ids: Sequence[int], img_ids: Sequence[int] | None = None,
                  pr_curve: str | Path | None = None) -> dict[str, float]:
    """COCO bbox metrics of ``results`` against the dataset dict ``gt``.

    Returns ``map`` (AP@[.5:.95]), ``map50``, ``map75`` and ``ap/<class>`` (AP@[.5:.95] of each
    class with ground truth). img_ids: evaluate these images only (e.g. those actually read).
    pr_curve: write the precision-recall curves at IoU 0.5 there (PNG).
    """
    from pycocotools.cocoeval import COCOeval

    metrics = {"map": 0.0, "map50": 0.0, "map75": 0.0}
    coco_gt = make_coco(gt)
    has_gt = {c for c in category_ids if coco_gt.getAnnIds(catIds=[c], iscrowd=False)}
    if not results:  # COCO.loadRes([]) raises; nothing detected is AP 0 for every class.
        metrics.update({f"ap/{n}": 0.0 for n, c in zip(class_names, category_ids) if c in has_gt})
        if pr_curve is not None:
            plot_pr_curves(None, class_names, category_ids, has_gt, pr_curve)
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys to the dicts it gets
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = sorted(set(int(i) for i in img_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics.update({"map": max(0.0, float(ev.stats[0])), "map50": max(0.0, float(ev.stats[1])),
                    "map75": max(0.0, float(ev.stats[2]))})
    # precision: (T iou thresholds, R recall points, K categories, A area ranges, M max dets);
    # -1 marks "no ground truth". Area "all" (0) and maxDets 100 (-1), as ev.stats[0].
    precision = ev.eval["precision"]
    cat_index = {c: k for k, c in enumerate(ev.params.catIds)}
    for name, cid in zip(class_names, category_ids):
        if cid not in has_gt or cid not in cat_index:
            continue
        p = precision[:, :, cat_index[cid], 0, -1]
        metrics[f"ap/{name}"] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
    if pr_curve is not None:
        plot_pr_curves(ev, class_names, category_ids, has_gt, pr_curve)
    return metrics


def plot_pr_curves(ev: Any, class_names: Sequence[str], category_ids: Sequence[int], has_gt: set[int],
                   path: str | Path) -> None:
    """Precision-recall curve at IoU 0.5 of each class (and their mean) as a PNG."""
    from cvapps.engine.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 5))
    recall = np.linspace(0, 1, 101)
    curves = []
    if ev is not None:
        cat_index = {c: k for k, c in enumerate(ev.params.catIds)}
        for name, cid in zip(class_names, category_ids):
            if cid not in has_gt or cid not in cat_index:
                continue
            p = np.clip(ev.eval["precision"][0, :, cat_index[cid], 0, -1], 0, None)
            curves.append(p)
            ax.plot(recall, p, linewidth=1, label=f"{name} AP50 {p.mean():.3f}")
    if curves:
        mean = np.mean(curves, axis=0)
        ax.plot(recall, mean, linewidth=2.5, color="black", label=f"all classes mAP50 {mean.mean():.3f}")
    else:
        ax.text(0.5, 0.5, "no detections", ha="center", va="center")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall (IoU 0.5)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, Path(path))


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
