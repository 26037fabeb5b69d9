"""Small course nets: LeNet-5 and the MNIST convnet (Conv32-Pool-Conv64-Pool-Conv128).

These use unpadded ("valid") convolutions, so each map is ``(n - f + 2p) / s + 1`` pixels wide
(:func:`~cvapps.backbones.base.conv_output_size`); a classifier with ``model.pool: flatten`` gets
exactly the parameter counts of the course notes (104,202 for the MNIST convnet + Dense 10).
"""

from __future__ import annotations

from torch import nn

from cvapps.backbones.base import Backbone, FeatureInfo
from cvapps.backbones.registry import register_backbone
from cvapps.backbones.weights import load_state, read_state_dict
from cvapps.errors import CvappsError


class _SequentialStages(Backbone):
    exact_strides = False

    def __init__(self, stages: list[nn.Sequential], channels: int, stride: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*stages)
        self.feature_info = [FeatureInfo("c3", channels, stride)]

    def stages(self) -> list[nn.Module]:
        return list(self.layers)

    def forward(self, x):
        return {"c3": self.layers(x)}


def _no_weights(name: str, weights, pretrained: bool) -> None:
    if pretrained:
        raise CvappsError(f"{name} has no published pretrained weights")


@register_backbone("mnist_convnet")
def mnist_convnet(in_channels: int = 1, weights=None, pretrained: bool = False) -> Backbone:
    """28x28 -> Conv 32@3x3 (26) -> MaxPool 2 (13) -> Conv 64@3x3 (11) -> MaxPool 2 (5) -> Conv 128@3x3 (3)."""
    _no_weights("mnist_convnet", weights, pretrained)
    net = _SequentialStages([
        nn.Sequential(nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(64, 128, 3), nn.ReLU()),
    ], channels=128, stride=8)
    return _maybe_load(net, weights)


@register_backbone("lenet")
def lenet(in_channels: int = 1, weights=None, pretrained: bool = False) -> Backbone:
    """LeNet-5 feature extractor: Conv 6@5x5 (pad 2) -> AvgPool 2 -> Conv 16@5x5 -> AvgPool 2 (28 -> 5)."""
    _no_weights("lenet", weights, pretrained)
    net = _SequentialStages([
        nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2)),
        nn.Sequential(nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2)),
    ], channels=16, stride=4)
    return _maybe_load(net, weights)


def _maybe_load(net: Backbone, weights) -> Backbone:
    if weights:
        load_state(net, read_state_dict(weights), str(weights))
    return net
