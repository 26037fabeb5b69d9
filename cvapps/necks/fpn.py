"""Feature Pyramid Network over a cvapps backbone, laid out like torchvision's ``BackboneWithFPN``.

Parameters are named ``body.*`` (our backbone, whose torchvision ResNets keep torchvision's names)
and ``fpn.*`` (``torchvision.ops.FeaturePyramidNetwork``), so inside a Faster R-CNN they read
``backbone.body.*``/``backbone.fpn.*`` exactly as in torchvision's COCO checkpoints.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from cvapps.backbones import Backbone
from cvapps.errors import ConfigError


class BackboneWithFPN(nn.Module):
    """Backbone features ``features`` (e.g. c2..c5) -> FPN maps of ``out_channels`` channels.

    forward(x (B, C, H, W)) -> OrderedDict ``{"0": stride s0, "1": ..., "pool": max-pooled last}``
    with keys ``"0".."n-1"`` in backbone order (torchvision's names, which RoI pooling selects by),
    plus ``"pool"`` (stride of the last map times 2) when ``extra_pool``. ``out_channels`` and
    ``strides`` (one per output map) are attributes, as torchvision detectors expect.
    """

    def __init__(self, body: Backbone, features: Sequence[str] = ("c2", "c3", "c4", "c5"),
                 out_channels: int = 256, extra_pool: bool = True) -> None:
        super().__init__()
        unknown = [f for f in features if f not in body.channels]
        if unknown or not features:
            raise ConfigError(f"config error: model.fpn_features: {list(features)} must name backbone features "
                              f"({', '.join(body.channels)})")
        self.body = body
        self.features = list(features)
        self.fpn = FeaturePyramidNetwork([body.channels[f] for f in self.features], out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_pool else None)
        self.out_channels = out_channels
        self.strides = [body.strides[f] for f in self.features] + ([body.strides[self.features[-1]] * 2]
                                                                  if extra_pool else [])

    @property
    def featmap_names(self) -> list[str]:
        """Names of the FPN maps RoI pooling uses (the extra ``pool`` level is for the RPN only)."""
        return [str(i) for i in range(len(self.features))]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), feats[f]) for i, f in enumerate(self.features)))
