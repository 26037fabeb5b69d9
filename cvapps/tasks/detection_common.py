"""What Faster R-CNN and YOLO share: datasets, collate, COCO evaluation and postprocessing.

A detector task subclasses :class:`DetectionTask` and implements ``build_model`` and
:meth:`DetectionTask.raw_detections`, which turns its model's eval outputs into per-image
``(boxes xyxy network-input pixels, scores, 0-based labels)``; confidence filtering, class-wise
NMS, ``max_det`` and the mapping back to original pixels happen here, once, for both.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from cvapps.config import TaskConfig
from cvapps.data.augment import SamplePipeline, build_augment
from cvapps.data.check import DetectionSplit, detect_layout, has_split, load_detection_split
from cvapps.data.detection import DetectionDataset
from cvapps.data.holdout import held_out
from cvapps.data.letterbox import LetterboxMeta
from cvapps.errors import DataError
from cvapps.io.images import read_image
from cvapps.metrics.coco import CocoDetectionMetric
from cvapps.nms import class_wise_nms
from cvapps.structures import Detections, Prediction
from cvapps.tasks.base import DatasetSplits, Task
from cvapps.tasks.common import check_num_classes

RawDetections = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class DetectionGT:
    """``DatasetSplits.val_extra`` of detection tasks: the val split's clean COCO ground truth
    (dataset dict) and the class index -> COCO category id mapping."""

    gt: dict[str, Any]
    category_ids: list[int]
    class_names: list[str] = field(default_factory=list)


class DetectionTask(Task):
    """Base of the detection tasks. Subclasses set ``name``/``config_class`` and implement
    ``build_model`` and ``raw_detections``."""

    primary_metric = "map50"
    resize_mode = "letterbox"
    # COCO evaluation keeps nearly every detection (conf 0.001, 100 per image), as COCO's protocol.
    eval_options = {"conf": 0.001, "iou": 0.5, "max_det": 100}
    parts = frozenset({"detections"})
    commands = frozenset({"detect"})
    postprocess_options = frozenset({"conf", "iou", "max_det"})
    tracks = True
    # raw_detections already runs class-wise NMS at the ``iou`` it is given (YOLO: ultralytics' NMS),
    # so postprocess need not run it again (a second pass keeps every box and costs ~0.2 ms an image)
    raw_nms_at_iou = False

    # --- data ---------------------------------------------------------------------------------
    @staticmethod
    def check_num_classes(cfg: TaskConfig, class_names: list[str]) -> None:
        """``model.num_classes``, when set, must agree with the dataset's classes (DataError)."""
        check_num_classes(cfg.model, class_names)

    def build_datasets(self, cfg: TaskConfig, val_only: bool = False) -> DatasetSplits:
        """Train/val DetectionDatasets (any layout of :data:`cvapps.data.check.LAYOUTS`, detected from ``data.root``).

        Without a val split, ``data.val_fraction`` of the train images (seeded) is held out.
        ``val_only``: a dataset with a val split needs no train split.
        """
        root = Path(cfg.data.root)
        names = cfg.data.names
        fit = dict(imgsz=cfg.data.imgsz, resize_mode=self.resize_mode, in_channels=cfg.model.in_channels)
        if val_only and has_split(root, "val"):
            val_split = load_detection_split(root, "val", class_names=names)
            if not val_split.records:
                raise DataError(f"{root}: the val split has no usable images ({val_split.report.summary()})")
            extra = DetectionGT(val_split.gt, list(val_split.category_ids), list(val_split.class_names))
            return DatasetSplits(None, DetectionDataset(val_split, SamplePipeline(**fit)),
                                 list(val_split.class_names), val_extra=extra)
        train_split = load_detection_split(root, "train", class_names=names)
        try:
            detect_layout(root, "val")
            val_split = load_detection_split(root, "val", class_names=train_split.class_names)
        except DataError:
            if has_split(root, "val"):
                raise
            train_split, val_split = _hold_out(train_split, cfg.data.val_fraction, cfg.train.seed)
        if not train_split.records:
            raise DataError(f"{root}: the train split has no usable images ({train_split.report.summary()})")
        if not val_split.records:
            raise DataError(f"{root}: the val split has no usable images ({val_split.report.summary()})")
        aug = build_augment(cfg.augment.train, boxes=True) if cfg.augment.train else None
        train = DetectionDataset(train_split, SamplePipeline(**fit, augment=aug), cfg.data.tile, cfg.data.tile_overlap)
        val = DetectionDataset(val_split, SamplePipeline(**fit))
        extra = DetectionGT(val_split.gt, list(val_split.category_ids), list(val_split.class_names))
        return DatasetSplits(train, val, list(train_split.class_names), val_extra=extra)

    def collate(self, batch: Sequence) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """images uint8 (B, C, H, W) stacked; targets: list of the B target dicts (None items dropped)."""
        return super().collate(batch)

    # --- evaluation ---------------------------------------------------------------------------
    def build_metric(self, splits: DatasetSplits) -> CocoDetectionMetric:
        """COCO mAP of the val split: ``map`` (AP@[.5:.95]), ``map50``, ``map75``, ``ap/<class>``."""
        extra: DetectionGT = splits.val_extra
        return CocoDetectionMetric(extra.gt, splits.class_names, extra.category_ids)

    def eval_items(self, dataset: DetectionDataset):
        for rec in dataset.records:
            yield str(rec.path), (lambda r=rec: (read_image(r.path), r.image_id))

    # --- prediction ---------------------------------------------------------------------------
    def raw_detections(self, outputs: Any, conf: float = 0.001, iou: float = 0.5) -> RawDetections:
        """Model eval outputs of a batch -> per image ``(boxes (N, 4) xyxy network-input pixels,
        scores (N,), labels (N,) 0-based)``. ``conf``/``iou`` are hints a detector may use to
        prune early (e.g. its own NMS); :meth:`postprocess` applies both anyway."""
        raise NotImplementedError

    def postprocess(self, outputs: Any, metas: list[LetterboxMeta], conf: float = 0.25, iou: float = 0.5,
                    max_det: int = 300, **_: Any) -> list[Prediction]:
        """Raw outputs -> one Prediction per image, its :class:`Detections` (xyxy in original pixels): scores
        >= ``conf``, class-wise NMS at ``iou``, the best ``max_det``."""
        out = []
        for (boxes, scores, labels), meta in zip(self.raw_detections(outputs, conf=conf, iou=iou), metas):
            boxes, scores, labels = boxes.float(), scores.float(), labels.long()
            keep = scores >= conf
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            if self.raw_nms_at_iou:
                keep = scores.argsort(descending=True, stable=True)[:max_det]
            else:
                keep = class_wise_nms(boxes, scores, labels, iou)[:max_det]  # sorted by score
            out.append(Prediction(Detections(meta.boxes_to_original(boxes[keep].cpu()), scores[keep], labels[keep])))
        return out


def _hold_out(split: DetectionSplit, fraction: float, seed: int) -> tuple[DetectionSplit, DetectionSplit]:
    """Split one checked split into train and val parts (``fraction`` of the images, seeded)."""
    val_idx = set(held_out(len(split.records), fraction, seed))
    val_ids = {split.records[i].image_id for i in val_idx}
    gt = dict(split.gt)
    gt["images"] = [im for im in split.gt["images"] if im["id"] in val_ids]
    gt["annotations"] = [a for a in split.gt["annotations"] if a["image_id"] in val_ids]
    print(f"no val split in {split.root}: holding out {len(val_idx)} of {len(split.records)} train images "
          "(data.val_fraction)", file=sys.stderr)
    train = replace(split, records=[r for i, r in enumerate(split.records) if i not in val_idx])
    val = replace(split, split="val", records=[split.records[i] for i in sorted(val_idx)], gt=gt)
    return train, val
