"""Semantic segmentation: shared backbone -> FCN-8s head (ConvTranspose2d upsampling) -> K scores per pixel.

Classes: index 0 is the background and is part of the class list (``["background", "circle", ...]``);
mask pixels hold the class index, 255 means "ignore" (not in the loss, not in the metrics).

Data, ``ROOT/images/<split>/*`` with either
  * ``ROOT/masks/<split>/<stem>.png`` (single-channel class-index PNGs; class names from
    ``data.names`` or the categories of ``ROOT/annotations/train.json``, mask value = class index), or
  * ``ROOT/annotations/<split>.json`` (COCO polygons/RLE, rasterised with pycocotools; class
    index = position of the category in id order + 1; crowd regions become 255).
Without ``ROOT/images/val`` a ``data.val_fraction`` share of train is held out. A mask whose size
differs from its image, that is not single-channel, or that holds values >= the class count other
than 255 is reported (file name and reason) and skipped when the dataset is built.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cvapps.config import ModelConfig, TaskConfig
from cvapps.data.augment import IGNORE_INDEX, SamplePipeline, build_augment
from cvapps.data.holdout import split_off
from cvapps.data.letterbox import PAD_VALUE, LetterboxMeta
from cvapps.errors import DataError, ImageReadError
from cvapps.data.segmentation import SegmentationDataset, SegmentExtra, class_names_for, scan_split
from cvapps.heads.fcn import AuxHead, FCN8sHead, pad_to_multiple
from cvapps.metrics.segmentation import SegmentationMetric
from cvapps.structures import Prediction, SegmentationMask
from cvapps.tasks.base import DatasetSplits, OnnxExport, Task
from cvapps.tasks.common import Normalize, backbone_from_config, check_num_classes
from cvapps.tasks.registry import TASKS, register_task


class SegmentModelConfig(ModelConfig):
    arch: Literal["fcn8s"] = "fcn8s"
    num_classes: int | None = Field(None, ge=2, description="classes including background; default: from the data (must agree)")
    hidden: int = Field(0, ge=0, description="width of a 3x3 conv block on the stride-32 feature before scoring (0: none)")
    aux: bool = Field(False, description="auxiliary FCN head on the stride-16 feature (training loss only)")
    aux_weight: float = Field(0.4, ge=0, description="weight of the auxiliary cross-entropy loss")


class SegmentConfig(TaskConfig):
    task: Literal["segment"] = "segment"
    model: SegmentModelConfig = Field(default_factory=SegmentModelConfig)


# --------------------------------------------------------------------------------------------- model
class FCN(nn.Module):
    """images (B, C, H, W) in [0, 1] -> logits (B, K, H, W) for any H, W.

    Training with targets (B, H, W) int64 (255 = ignore) returns ``{"loss_seg"}`` (+ ``"loss_aux"``
    weighted by ``aux_weight`` when the auxiliary head is on).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, in_channels: int = 3, hidden: int = 0,
                 aux: bool = False, aux_weight: float = 0.4) -> None:
        super().__init__()
        f8, f16, f32 = backbone.require_strides((8, 16, 32), "FCN segmentation")
        self.normalize = Normalize(in_channels)
        self.backbone = backbone
        self.features = (f8.name, f16.name, f32.name)
        self.head = FCN8sHead((f8.channels, f16.channels, f32.channels), num_classes, hidden)
        self.aux = AuxHead(f16.channels, num_classes) if aux else None
        self.aux_weight = aux_weight

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None):
        h, w = images.shape[-2:]
        # Pad with the letterbox grey so padding looks like the padding the model trained on.
        x = pad_to_multiple(images, FCN8sHead.max_stride, PAD_VALUE / 255)
        feats = self.backbone(self.normalize(x))
        f8, f16, f32 = (feats[n] for n in self.features)
        logits = self.head((f8, f16, f32), (h, w))
        if not (self.training and targets is not None):
            return logits
        losses = {"loss_seg": _cross_entropy(logits, targets)}
        if self.aux is not None:
            aux = F.interpolate(self.aux(f16), size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]
            losses["loss_aux"] = self.aux_weight * _cross_entropy(aux, targets)
        return losses


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE over non-ignored pixels; 0 (with a graph) when a batch has none, instead of NaN."""
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)


# ---------------------------------------------------------------------------------------------- task
@register_task
class SegmentTask(Task):
    cpu_channels_last = True  # measured: 10-40% faster than NCHW on the CPU
    name = "segment"
    config_class = SegmentConfig
    primary_metric = "miou"
    resize_mode = "letterbox"
    parts = frozenset({"semantic"})
    commands = frozenset({"segment"})
    # logits are O(10): 1e-4 is ~1e-5 relative
    onnx = OnnxExport((("logits", "float32 (B, K, S, S) per-pixel class logits (letterboxed input pixels)"),),
                      parity_atol=1e-4)

    def build_model(self, cfg: SegmentConfig, class_names: list[str]) -> nn.Module:
        mc = cfg.model
        check_num_classes(mc, class_names)
        backbone = backbone_from_config(mc)
        return FCN(backbone, len(class_names), mc.in_channels, mc.hidden, mc.aux, mc.aux_weight)

    def build_datasets(self, cfg: SegmentConfig, val_only: bool = False) -> DatasetSplits:
        root = Path(cfg.data.root)
        if not root.is_dir():
            raise DataError(f"data.root not found: {root}")
        val_only = val_only and (root / "images" / "val").is_dir()
        names, category_ids = class_names_for(root, cfg.data.names, "val" if val_only else "train")
        skipped: list[tuple[str, str]] = []
        fit = dict(imgsz=cfg.data.imgsz, resize_mode=self.resize_mode, in_channels=cfg.model.in_channels)
        if val_only:
            val = scan_split(root, "val", len(names), category_ids, skipped, names)
            for path, reason in skipped:
                print(f"skipped {path}: {reason}", file=sys.stderr)
            return DatasetSplits(None, SegmentationDataset(val, SamplePipeline(**fit)), names,
                                 val_extra=SegmentExtra(category_ids, skipped))
        train = scan_split(root, "train", len(names), category_ids, skipped, names)
        if (root / "images" / "val").is_dir():
            val = scan_split(root, "val", len(names), category_ids, skipped, names)
        else:
            train, val = split_off(train, cfg.data.val_fraction, cfg.train.seed)
        for path, reason in skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        if not train:
            raise DataError(f"{root}: no usable training images with masks"
                            + (f" ({len(skipped)} skipped, see above)" if skipped else ""))
        if not any(s.labelled for s in train):  # as detection refuses 0 boxes: nothing to learn from
            raise DataError(f"{root}: the train split has no usable annotations (every mask is background or "
                            f"ignore{f'; {len(skipped)} files skipped, see above' if skipped else ''}); "
                            f"see the report of `cvapps data check {root}`")
        return DatasetSplits(
            SegmentationDataset(train, SamplePipeline(**fit, augment=build_augment(cfg.augment.train))),
            SegmentationDataset(val, SamplePipeline(**fit)),
            names,
            val_extra=SegmentExtra(category_ids, skipped),
        )

    def collate(self, batch: Sequence):
        batch = [b for b in batch if b is not None]
        if not batch:
            return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, 1, 1, dtype=torch.int64)
        return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])

    def build_metric(self, splits: DatasetSplits) -> SegmentationMetric:
        return SegmentationMetric(splits.class_names)

    def eval_items(self, dataset: SegmentationDataset):
        def load(i: int) -> tuple[np.ndarray, np.ndarray]:
            image, mask = dataset.load(i)
            if mask.shape != image.shape[:2]:  # changed on disk since the dataset was built
                raise ImageReadError(dataset.samples[i].image, "mask size differs from the image")
            return image, mask

        for i, sample in enumerate(dataset.samples):
            yield str(sample.image), (lambda i=i: load(i))

    def postprocess(self, outputs: torch.Tensor, metas: list[LetterboxMeta], **_: Any) -> list[Prediction]:
        """logits (B, K, S, S) -> per image a Prediction whose ``semantic`` part is
        ``SegmentationMask(mask HxW uint8, scores (K,))`` in
        ORIGINAL pixels; ``scores[c]`` is the mean probability of class ``c`` over its pixels.

        Softmax and argmax run at network resolution on the unpadded part; only the uint8 index
        map is resized (nearest, pixel centres aligned) to the original size, not K float score
        maps: the cost stays that of the network's output, whatever the photo's size.
        """
        probs = outputs.float().softmax(1)
        confs, labels = probs.max(1)                                          # (B, S, S) each
        k = probs.shape[1]
        results = []
        for conf, label, meta in zip(confs, labels, metas):
            conf, label = meta.crop_padding(conf).flatten(), meta.crop_padding(label)
            counts = torch.bincount(label.flatten(), minlength=k).float()
            sums = torch.zeros(k, device=conf.device).index_add_(0, label.flatten(), conf)
            scores = (sums / counts.clamp(min=1)).cpu().numpy().astype(np.float32)
            small = label.to(torch.uint8).cpu().numpy()
            (h, w) = meta.orig_hw
            mask = small if small.shape == (h, w) else cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
            results.append(Prediction(semantic=SegmentationMask(mask, scores)))
        return results


TASK = TASKS[SegmentTask.name]
