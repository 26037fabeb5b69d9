"""torchvision classification nets as backbones: resnet18/50, mobilenet_v3_large, vgg16.

Each wraps torchvision's ``IntermediateLayerGetter`` so parameter names keep torchvision's layout
(``conv1.weight``, ``layer1.0...`` for ResNet; ``0.0.weight`` over ``features`` for MobileNet/VGG).
That is also the layout of torchvision's detection checkpoints under ``backbone.body.*``, so a COCO
``fasterrcnn_resnet50_fpn`` state dict loads without a key map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from cvapps.backbones.base import Backbone, FeatureInfo
from cvapps.backbones.registry import register_backbone
from cvapps.backbones.weights import load_state, read_state_dict
from cvapps.errors import CheckpointError, CvappsError


class TorchvisionBackbone(IntermediateLayerGetter, Backbone):
    """IntermediateLayerGetter returning ``{"c2".."c5"}`` with declared channels and strides."""

    def __init__(self, net: nn.Module, return_layers: dict[str, str], channels: list[int],
                 strides: list[int], stage_names: list[list[str]]) -> None:
        IntermediateLayerGetter.__init__(self, net, return_layers)
        self.feature_info = [FeatureInfo(n, c, s) for n, c, s in zip(return_layers.values(), channels, strides)]
        self._stage_names = stage_names

    def stages(self) -> list[nn.Module]:
        return [nn.ModuleList([self[n] for n in names]) for names in self._stage_names]

    def forward(self, x):  # IntermediateLayerGetter.forward, named for clarity in summaries
        return IntermediateLayerGetter.forward(self, x)


def _make_net(name: str, weights: str | Path | None, pretrained: bool, **kwargs) -> nn.Module:
    """The full torchvision classification net, with a local weights file or the named ImageNet weights."""
    factory = getattr(torchvision.models, name)
    if pretrained and weights:
        raise CvappsError("set model.backbone_weights or model.pretrained, not both")
    if pretrained:
        try:
            net = factory(weights="DEFAULT", **kwargs)
        except Exception as exc:  # URLError/ConnectionError/RuntimeError from the hub download
            raise CheckpointError(
                f"could not fetch torchvision's pretrained {name} weights ({type(exc).__name__}); offline, "
                f"download the torchvision {name} .pth file elsewhere and set model.backbone_weights=FILE"
            ) from None
        return net
    net = factory(weights=None, **kwargs)
    if weights:
        load_state(net, read_state_dict(weights), str(weights), ignore_prefixes=("fc.", "classifier."))
    return net


def _adapt_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A first conv for ``in_channels`` inputs; pretrained RGB filters are averaged (grayscale) or tiled."""
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    w = conv.weight.data.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
    new.weight.data.copy_(w)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.data)
    return new


def _resnet(name: str, channels: list[int]) -> Callable[..., Backbone]:
    def build(in_channels: int = 3, weights=None, pretrained: bool = False,
              norm_layer: Callable[..., nn.Module] | None = None) -> Backbone:
        kwargs = {"norm_layer": norm_layer} if norm_layer is not None else {}
        net = _make_net(name, weights, pretrained, **kwargs)
        net.conv1 = _adapt_in_channels(net.conv1, in_channels)
        return TorchvisionBackbone(
            net, {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}, channels, [4, 8, 16, 32],
            [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]],
        )

    return build


register_backbone("resnet18")(_resnet("resnet18", [64, 128, 256, 512]))
register_backbone("resnet50")(_resnet("resnet50", [256, 512, 1024, 2048]))


def _sequential(name: str, taps: dict[int, str], channels: list[int], first_conv: tuple[int, ...]) -> Callable[..., Backbone]:
    """Nets whose ``features`` is a Sequential; ``taps`` are the indices ending each stride stage."""

    def build(in_channels: int = 3, weights=None, pretrained: bool = False, norm_layer=None) -> Backbone:
        if norm_layer is not None:
            raise CvappsError(f"{name} does not take a norm_layer")
        features = _make_net(name, weights, pretrained).features
        parent, idx = features, list(first_conv)
        while len(idx) > 1:
            parent = parent[idx.pop(0)]
        parent[idx[0]] = _adapt_in_channels(parent[idx[0]], in_channels)
        ends = sorted(taps)
        starts = [0] + [e + 1 for e in ends[:-1]]
        stage_names = [[str(i) for i in range(s, e + 1)] for s, e in zip(starts, ends)]
        return TorchvisionBackbone(features, {str(i): taps[i] for i in ends}, channels, [4, 8, 16, 32], stage_names)

    return build


register_backbone("mobilenet_v3_large")(
    _sequential("mobilenet_v3_large", {3: "c2", 6: "c3", 12: "c4", 16: "c5"}, [24, 40, 112, 960], (0, 0)))
register_backbone("vgg16")(
    _sequential("vgg16", {9: "c2", 16: "c3", 23: "c4", 30: "c5"}, [128, 256, 512, 512], (0,)))
