"""Name -> builder for backbones, and :func:`build_backbone`, the one place weights and freezing happen.

Each backbone module registers its builders with :func:`register_backbone` when imported; the
package ``cvapps.backbones`` imports them all (timm style), so this module imports none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from cvapps.backbones.base import Backbone, check_backbone
from cvapps.errors import CvappsError

BackboneBuilder = Callable[..., Backbone]
BACKBONES: dict[str, BackboneBuilder] = {}


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
    if name not in BACKBONES:
        raise CvappsError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    kwargs: dict = {"in_channels": in_channels, "weights": weights, "pretrained": pretrained}
    if norm_layer is not None:
        kwargs["norm_layer"] = norm_layer
    backbone = BACKBONES[name](**kwargs)
    if freeze:
        backbone.freeze(freeze)
    check_backbone(backbone, in_channels, size=check_size)
    return backbone
