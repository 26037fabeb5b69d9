"""COCO box mAP through pycocotools' COCOeval: the one place mAP is computed (val and training).

:class:`CocoDetectionMetric` gets Detections in original image pixels and turns them into COCO
results with their one COCO form (``Detections.to_coco``), as ``cvapps detect --save-json`` does, so ``cvapps val`` equals a COCOeval
of ``predictions.json`` run by anyone else.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cvapps.metrics.plots import new_figure, save_figure


class CocoDetectionMetric:
    """predictions: Predictions, their ``detections`` (xyxy original pixels, 0-based labels);
    targets: COCO image ids of ``gt`` (a COCO dataset dict); class index ``i`` is category ``category_ids[i]``."""

    def __init__(self, gt: dict[str, Any], class_names: list[str], category_ids: list[int]) -> None:
        self.gt, self.class_names, self.category_ids = gt, list(class_names), list(category_ids)
        self.reset()

    def reset(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.seen: list[int] = []
        self.last_eval: Any = None

    def process(self, predictions: Sequence[Any], targets: Sequence[int]) -> None:
        for pred, image_id in zip(predictions, targets):
            self.seen.append(int(image_id))
            self.results += pred.detections.to_coco(int(image_id), self.category_ids)

    def summarize(self) -> dict[str, float]:
        """``map`` (AP@[.5:.95]), ``map50``, ``map75``, ``ap/<class>`` over the images processed."""
        metrics, self.last_eval = _evaluate(self.gt, self.results, self.class_names, self.category_ids, self.seen)
        return metrics

    def plot(self, out_dir: Path) -> None:
        ev, has_gt = self.last_eval if self.last_eval is not None else (None, set())
        plot_pr_curves(ev, self.class_names, self.category_ids, has_gt, Path(out_dir) / "pr_curve.png")


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
    metrics, (ev, has_gt) = _evaluate(gt, results, class_names, category_ids, img_ids)
    if pr_curve is not None:
        plot_pr_curves(ev, class_names, category_ids, has_gt, pr_curve)
    return metrics


def _evaluate(gt: dict[str, Any], results: list[dict[str, Any]], class_names: Sequence[str],
              category_ids: Sequence[int], img_ids: Sequence[int] | None) -> tuple[dict[str, float], tuple[Any, set[int]]]:
    """(metrics, (the COCOeval object or None when nothing was detected, category ids with ground truth))."""
    from pycocotools.cocoeval import COCOeval

    metrics = {"map": 0.0, "map50": 0.0, "map75": 0.0}
    coco_gt = make_coco(gt)
    has_gt = {c for c in category_ids if coco_gt.getAnnIds(catIds=[c], iscrowd=False)}
    if not results:  # COCO.loadRes([]) raises; nothing detected is AP 0 for every class.
        metrics.update({f"ap/{n}": 0.0 for n, c in zip(class_names, category_ids) if c in has_gt})
        return metrics, (None, has_gt)
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
    return metrics, (ev, has_gt)


def plot_pr_curves(ev: Any, class_names: Sequence[str], category_ids: Sequence[int], has_gt: set[int],
                   path: str | Path) -> None:
    """Precision-recall curve at IoU 0.5 of each class (and their mean) as a PNG."""
    fig, ax = new_figure((6, 5))
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


