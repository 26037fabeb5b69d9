"""Image classification: shared backbone -> global pool -> dropout -> linear head.

Transfer learning = ``model.backbone_weights`` (or ``pretrained``) + ``model.freeze``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cvapps.config import ModelConfig, TaskConfig
from cvapps.data.augment import SamplePipeline, build_augment
from cvapps.data.folders import ClassFolderDataset, scan_class_folders
from cvapps.data.holdout import split_off
from cvapps.data.letterbox import LetterboxMeta
from cvapps.errors import DataError
from cvapps.heads.classifier import ClassifierHead
from cvapps.io.images import read_image
from cvapps.metrics.classification import ClassificationMetric
from cvapps.structures import Classification, Prediction
from cvapps.tasks.base import DatasetSplits, OnnxExport, Task
from cvapps.tasks.common import Normalize, backbone_from_config
from cvapps.tasks.registry import TASKS, register_task


class ClassifyModelConfig(ModelConfig):
    arch: Literal["classifier"] = "classifier"
    pool: Literal["avg", "flatten"] = Field("avg", description="avg: global average pool; flatten: fixed-size Dense input")
    dropout: float = Field(0.2, ge=0, lt=1)
    hidden: list[int] = Field(default_factory=list, description="Dense+ReLU widths before the output layer")
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class ClassifyConfig(TaskConfig):
    task: Literal["classify"] = "classify"
    model: ClassifyModelConfig = Field(default_factory=ClassifyModelConfig)


class Classifier(nn.Module):
    """images (B, C, H, W) in [0, 1] -> logits (B, K); with targets (B,) in training -> {"loss_cls"}."""

    def __init__(self, backbone: nn.Module, head: ClassifierHead, in_channels: int = 3, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.normalize = Normalize(in_channels)
        self.backbone = backbone
        self.head = head
        self.feature = backbone.feature_info[-1].name
        self.label_smoothing = label_smoothing

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None):
        features = self.backbone(self.normalize(images))
        logits = self.head(features[self.feature])
        if self.training and targets is not None:
            return {"loss_cls": F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)}
        return logits


@register_task
class ClassifyTask(Task):
    name = "classify"
    config_class = ClassifyConfig
    primary_metric = "accuracy"
    resize_mode = "stretch"
    rect_stride = None
    parts = frozenset({"classification"})
    commands = frozenset({"classify"})
    postprocess_options = frozenset({"topk"})
    # logits are O(10): 1e-4 is ~1e-5 relative
    onnx = OnnxExport((("logits", "float32 (B, K) class logits"),), parity_atol=1e-4)
    # measured with the packed convolutions (engine/packed_conv.py), 2 cores, batch 8: channels_last 1.05x
    # NCHW for the tiny classifier at 64 px, 1.02x resnet18, 1.00x the MNIST convnet (plain nn.Conv2d: 0.65x)
    cpu_channels_last = True

    def build_model(self, cfg: ClassifyConfig, class_names: list[str]) -> nn.Module:
        mc, size = cfg.model, cfg.data.imgsz
        backbone = backbone_from_config(mc, check_size=size)
        info = backbone.feature_info[-1]
        in_hw = (1, 1)
        if mc.pool == "flatten":
            with torch.no_grad():
                was = backbone.training
                backbone.eval()
                fmap = backbone(torch.zeros(1, mc.in_channels, size, size))[info.name]
                backbone.train(was)
            in_hw = tuple(fmap.shape[-2:])
        head = ClassifierHead(info.channels, len(class_names), mc.pool, mc.dropout, mc.hidden, in_hw)
        return Classifier(backbone, head, mc.in_channels, mc.label_smoothing)

    def build_datasets(self, cfg: ClassifyConfig, val_only: bool = False) -> DatasetSplits:
        root = Path(cfg.data.root)
        if not root.is_dir():
            raise DataError(f"data.root not found: {root}")
        fit = dict(imgsz=cfg.data.imgsz, resize_mode=self.resize_mode, in_channels=cfg.model.in_channels)
        if val_only and (root / "val").is_dir():
            val_samples, names = scan_class_folders(root / "val", cfg.data.names)
            return DatasetSplits(None, ClassFolderDataset(val_samples, SamplePipeline(**fit)), names)
        train_dir = root / "train" if (root / "train").is_dir() else root
        train_samples, names = scan_class_folders(train_dir, cfg.data.names)
        if (root / "val").is_dir():
            val_samples, _ = scan_class_folders(root / "val", names)
        else:
            train_samples, val_samples = split_off(train_samples, cfg.data.val_fraction, cfg.train.seed,
                                                   groups=[label for _, label in train_samples])  # per class
        train = ClassFolderDataset(train_samples, SamplePipeline(**fit, augment=build_augment(cfg.augment.train)))
        val = ClassFolderDataset(val_samples, SamplePipeline(**fit))
        return DatasetSplits(train, val, names)

    def collate(self, batch: Sequence):
        images, labels = super().collate(batch)
        return images, torch.as_tensor(labels, dtype=torch.int64)

    def build_metric(self, splits: DatasetSplits) -> ClassificationMetric:
        return ClassificationMetric(splits.class_names)

    def eval_items(self, dataset: ClassFolderDataset):
        for path, label in dataset.samples:
            yield str(path), (lambda p=path, y=label: (read_image(p), y))

    def postprocess(self, outputs: torch.Tensor, metas: list[LetterboxMeta], topk: int = 3, **_) -> list[Prediction]:
        probs = outputs.float().softmax(1).cpu()
        k = min(topk, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        return [Prediction(classification=Classification(int(i[0]), float(v[0]), list(zip(i.tolist(), v.tolist()))))
                for v, i in zip(values, indices)]


TASK = TASKS[ClassifyTask.name]
