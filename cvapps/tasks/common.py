"""Pieces every task model shares: input normalisation, the backbone built from config and the check
of ``model.num_classes`` against the dataset."""

from __future__ import annotations

import torch
from torch import nn

from cvapps.backbones import Backbone, build_backbone
from cvapps.config import ModelConfig
from cvapps.errors import DataError, shorten

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(B, C, H, W) float in [0, 1] -> (x - mean) / std with ImageNet statistics (their mean for gray).

    Inside the model, so checkpoints, ONNX exports and every predictor agree on preprocessing.
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        mean = IMAGENET_MEAN if in_channels == 3 else (sum(IMAGENET_MEAN) / 3,) * in_channels
        std = IMAGENET_STD if in_channels == 3 else (sum(IMAGENET_STD) / 3,) * in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        # x * (1 / std) + (-mean / std) in one fused pass: on a channels_last batch, (x - mean) / std
        # takes two broadcast passes over 3-channel pixels, 7x slower on the CPU (7 vs 1 ms, 8 x 160 px).
        self.register_buffer("scale", 1 / self.std, persistent=False)
        self.register_buffer("shift", -self.mean / self.std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


def backbone_from_config(mc: ModelConfig, check_size: int = 64, **kwargs) -> Backbone:
    return build_backbone(mc.backbone, in_channels=mc.in_channels, weights=mc.backbone_weights,
                          pretrained=mc.pretrained, freeze=mc.freeze, check_size=check_size, **kwargs)


def check_num_classes(mc: ModelConfig, class_names: list[str]) -> None:
    """``model.num_classes``, when set, must be the dataset's class count (``class_names``: the
    dataset's classes, or ``data.names`` / a checkpoint's classes already matched against it).

    A DataError, as every other disagreement between the classes a model is given and a dataset
    (``data.names`` vs the annotation files): the key is well formed, the data decides what is right."""
    num = getattr(mc, "num_classes", None)
    if num is not None and num != len(class_names):
        raise DataError(f"model.num_classes is {num} but the dataset has {len(class_names)} classes "
                        f"{shorten(class_names)}: set it to {len(class_names)} or leave it out")
