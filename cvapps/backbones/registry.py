"""Name -> builder for backbones, and :func:`build_backbone`, the one place weights and freezing happen.

Each backbone module registers its builders with :func:`register_backbone` when imported. This
module imports none of them: :data:`BACKBONE_MODULES` names the module that registers each backbone,
and :func:`build_backbone` imports it on first use, so a command pays only for the family it builds
(torchvision's import alone adds ~1.5 s to the start-up of a run on the ``tiny`` backbone).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from torch import nn

from cvapps.backbones.base import Backbone, check_backbone
from cvapps.errors import CvappsError

BackboneBuilder = Callable[..., Backbone]
BACKBONES: dict[str, BackboneBuilder] = {}
# Backbone name -> the module that registers it (tests check this table against the modules).
BACKBONE_MODULES: dict[str, str] = {
    "tiny": "cvapps.backbones.tiny",
    "csp_n": "cvapps.backbones.csp",
    "lenet": "cvapps.backbones.course",
    "mnist_convnet": "cvapps.backbones.course",
    "resnet18": "cvapps.backbones.torchvision_nets",
    "resnet50": "cvapps.backbones.torchvision_nets",
    "mobilenet_v3_large": "cvapps.backbones.torchvision_nets",
    "vgg16": "cvapps.backbones.torchvision_nets",
}


def available_backbones() -> list[str]:
    """Every backbone name :func:`build_backbone` accepts (importing no backbone module)."""
    return sorted(set(BACKBONE_MODULES) | set(BACKBONES))


def backbone_builder(name: str) -> BackboneBuilder:
    """The registered builder for ``name``, importing the module that registers it if needed."""
    if name not in BACKBONES and name in BACKBONE_MODULES:
        importlib.import_module(BACKBONE_MODULES[name])
    if name not in BACKBONES:
        raise CvappsError(f"unknown backbone {name!r}; choose one of: {', '.join(available_backbones())}")
    return BACKBONES[name]


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def add(builder: BackboneBuilder) -> BackboneBuilder:
        BACKBONES[name] = builder
        return builder

    return add


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    weights: str | Path | None = None,
    pretrained: bool = False,
    freeze: int = 0,
    norm_layer: Callable[..., nn.Module] | None = None,
    check_size: int = 64,
) -> Backbone:
    """Build a registered backbone, load its weights, freeze its first ``freeze`` stages, check it.

    weights: a torchvision-format state dict file for the *classification* net the backbone comes
    from (e.g. ``resnet18-f37072fd.pth``); classifier keys (``fc.*``, ``classifier.*``) are ignored.
    pretrained: torchvision's ImageNet weights by name (needs the network or a filled torch hub cache).
    norm_layer: e.g. ``torchvision.ops.FrozenBatchNorm2d`` for detection fine-tuning.
    """
    builder = backbone_builder(name)
    kwargs: dict = {"in_channels": in_channels, "weights": weights, "pretrained": pretrained}
    if norm_layer is not None:
        kwargs["norm_layer"] = norm_layer
    backbone = builder(**kwargs)
    if freeze:
        backbone.freeze(freeze)
    check_backbone(backbone, in_channels, size=check_size)
    return backbone
