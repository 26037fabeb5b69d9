"""``tiny``: a compact CNN (about 0.6M parameters) that trains in seconds on a CPU."""

from __future__ import annotations

from torch import nn

from cvapps.backbones.base import Backbone, FeatureInfo, StemStagesBackbone
from cvapps.backbones.registry import register_backbone
from cvapps.backbones.weights import load_state, read_state_dict
from cvapps.errors import CvappsError


def _conv(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Module:
    """conv (same padding, no bias) + BN + SiLU: torchvision's ``Conv2dNormActivation`` layout
    (keys ``0``/``1``), built from torch.nn so that a tiny-backbone run never imports torchvision."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU(inplace=True))


class TinyBackbone(StemStagesBackbone):
    """Five stride-2 stages, 3x3 conv + BN + SiLU; features c2..c5 at strides 4/8/16/32.

    The 1x1 conv in c5 mixes channels at no spatial cost (the "network in network" idea).
    """

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = _conv(in_channels, w, 2)                                              # /2
        self.c2 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))                   # /4
        self.c3 = nn.Sequential(_conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w))               # /8
        self.c4 = nn.Sequential(_conv(4 * w, 8 * w, 2), _conv(8 * w, 8 * w))               # /16
        self.c5 = nn.Sequential(_conv(8 * w, 16 * w, 2), _conv(16 * w, 16 * w, kernel=1))  # /32
        self.feature_info = [FeatureInfo(f"c{i}", w * 2 ** (i - 1), 2 ** i) for i in range(2, 6)]


@register_backbone("tiny")
def tiny(in_channels: int = 3, weights=None, pretrained: bool = False) -> Backbone:
    if pretrained:
        raise CvappsError("the tiny backbone has no published pretrained weights; use model.backbone_weights=FILE")
    net = TinyBackbone(in_channels)
    if weights:
        load_state(net, read_state_dict(weights), str(weights))
    return net
