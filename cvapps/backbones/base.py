"""The backbone contract every task builds on.

A backbone maps images ``(B, C, H, W)`` to a dict of stage feature maps, e.g.
``{"c2": (B, 64, H/4, W/4), "c3": (B, 128, H/8, W/8), "c4": ..., "c5": (B, 512, H/32, W/32)}``.
Names, channels and strides are known at build time (:attr:`Backbone.feature_info`) and checked
by :func:`check_backbone` with one dummy forward pass, as torchvision's ``out_channels`` and timm's
``feature_info`` do. Tasks pick the stages they need by stride (FCN and YOLO use 8/16/32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cvapps.errors import CvappsError


@dataclass(frozen=True)
class FeatureInfo:
    """name: key in the forward dict; channels: C of that map; stride: input pixels per map pixel."""

    name: str
    channels: int
    stride: int


def conv_output_size(n: int, f: int, p: int = 0, s: int = 1) -> int:
    """Spatial output size of a convolution or pooling layer: ``(n - f + 2p) / s + 1`` (floored)."""
    return (n - f + 2 * p) // s + 1


class Backbone(nn.Module):
    """Base class: subclasses set ``feature_info`` and ``stages`` and implement ``forward``.

    stages: the modules in input order, one per stage (stem first); ``freeze(n)`` freezes the
    first ``n`` of them for transfer learning, ``freeze(-1)`` all of them.
    exact_strides: False for small course nets with unpadded convolutions, whose maps are only
    roughly ``H / stride``; their channels are still checked.
    """

    feature_info: list[FeatureInfo]
    exact_strides: bool = True

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def channels(self) -> dict[str, int]:
        return {f.name: f.channels for f in self.feature_info}

    @property
    def strides(self) -> dict[str, int]:
        return {f.name: f.stride for f in self.feature_info}

    def feature_by_stride(self, stride: int) -> FeatureInfo | None:
        return next((f for f in self.feature_info if f.stride == stride), None)

    def require_strides(self, strides: tuple[int, ...], user: str) -> list[FeatureInfo]:
        """The features at ``strides``, or a clear error naming the task that needs them."""
        found = [self.feature_by_stride(s) for s in strides]
        missing = [s for s, f in zip(strides, found) if f is None]
        if missing:
            have = ", ".join(f"{f.name}@{f.stride}" for f in self.feature_info)
            raise CvappsError(
                f"{user} needs backbone features at strides {list(strides)}, but "
                f"{type(self).__name__} has only {have}; choose another model.backbone"
            )
        return found  # type: ignore[return-value]

    def freeze(self, n_stages: int) -> None:
        """Stop gradients in the first ``n_stages`` stages (all if negative); their BN stays in eval."""
        stages = self.stages()
        n = len(stages) if n_stages < 0 else min(n_stages, len(stages))
        self._frozen = stages[:n]
        for stage in self._frozen:
            for p in stage.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        # Frozen stages keep their batch statistics: updating them would silently change the
        # pretrained features we froze on purpose.
        for stage in getattr(self, "_frozen", []):
            stage.eval()
        return self


class StemStagesBackbone(Backbone):
    """A stem then stages ``c2``..``c5`` applied in turn, each stage's output a feature map (the
    layout of ``tiny`` and ``csp_n``): subclasses set ``stem``, ``c2``..``c5`` and ``feature_info``."""

    STAGE_NAMES = ("c2", "c3", "c4", "c5")

    def stages(self) -> list[nn.Module]:
        return [self.stem, *(getattr(self, name) for name in self.STAGE_NAMES)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = self.stem(x)
        for name in self.STAGE_NAMES:
            x = getattr(self, name)(x)
            out[name] = x
        return out


def check_backbone(backbone: Backbone, in_channels: int = 3, size: int = 64) -> None:
    """Run one dummy batch and check names, channels and strides against ``feature_info``."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            param = next(backbone.parameters())
            out = backbone(torch.zeros(1, in_channels, size, size, device=param.device))
    finally:
        backbone.train(was_training)
    names = [f.name for f in backbone.feature_info]
    if list(out) != names:
        raise AssertionError(f"{type(backbone).__name__} returned {list(out)}, declared {names}")
    for info in backbone.feature_info:
        fmap = out[info.name]
        if fmap.shape[1] != info.channels:
            raise AssertionError(f"{info.name}: {fmap.shape[1]} channels, declared {info.channels}")
        if backbone.exact_strides and fmap.shape[-1] != -(-size // info.stride):
            raise AssertionError(f"{info.name}: width {fmap.shape[-1]} at input {size}, declared stride {info.stride}")
