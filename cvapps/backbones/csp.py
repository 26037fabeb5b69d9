"""``csp_n``: a CSP backbone the size of yolov8n's (about 1.3M parameters), for real imagery.

Stages follow ultralytics' YOLOv8 backbone at scale "n" (width 0.25, depth 0.33): a stride-2 3x3
``Conv`` opens each stage and a ``C2f`` block (cross-stage partial: half the channels skip the
bottlenecks and are concatenated back, so gradients take a short path) refines it; ``SPPF`` (max
pools of growing reach, concatenated and mixed by a 1x1 conv) ends the last one. The blocks are
ultralytics' own (through :mod:`cvapps.ultralytics_parts`), so BatchNorm folding and the packed
inference form apply to them as to the YOLO head. Features c2..c5 at strides 4/8/16/32 with 32,
64, 128, 256 channels, so every task (FCN, YOLO, Faster R-CNN, classification) can use it.
"""

from __future__ import annotations

from torch import nn

from cvapps import ultralytics_parts
from cvapps.backbones.base import Backbone, FeatureInfo, StemStagesBackbone
from cvapps.backbones.registry import register_backbone
from cvapps.backbones.weights import load_state, read_state_dict
from cvapps.errors import CvappsError


class CSPBackbone(StemStagesBackbone):
    """stem (/2) -> c2 (/4) -> c3 (/8) -> c4 (/16) -> c5 (/32, with SPPF).

    widths: output channels of stem, c2, c3, c4, c5; depths: C2f bottlenecks in c2..c5.
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 128, 256),
                 depths: tuple[int, ...] = (1, 2, 2, 1)) -> None:
        super().__init__()
        conv, c2f = ultralytics_parts.Conv, ultralytics_parts.C2f
        self.stem = conv(in_channels, widths[0], 3, 2)
        stages = []
        for i, depth in enumerate(depths):
            cin, cout = widths[i], widths[i + 1]
            stages.append(nn.Sequential(conv(cin, cout, 3, 2), c2f(cout, cout, depth, True)))
        stages[-1].append(ultralytics_parts.SPPF(widths[-1], widths[-1], 5))
        self.c2, self.c3, self.c4, self.c5 = stages
        self.feature_info = [FeatureInfo(f"c{i}", widths[i - 1], 2 ** i) for i in range(2, 6)]


@register_backbone("csp_n")
def csp_n(in_channels: int = 3, weights=None, pretrained: bool = False) -> Backbone:
    if pretrained:
        raise CvappsError("csp_n has no published pretrained weights; use model.backbone_weights=FILE "
                          "(a state dict of this backbone)")
    net = CSPBackbone(in_channels)
    if weights:
        load_state(net, read_state_dict(weights), str(weights))
    return net
