"""A small FPN + PAN neck (as in YOLOv8) over the backbone's stride 8/16/32 features.

Built from ultralytics' ``Conv`` (conv + BN + SiLU) and ``C2f`` (CSP bottleneck) blocks, so the
layers are the ones the YOLO head was designed with; only the wiring is ours.

    c5 --1x1--> p5 ---------------------------------------------> cat -> C2f -> out5 (stride 32)
                 | up                                              ^ (3x3 s2)
    c4 -------> cat -> C2f -> t4 -------------------------> cat -> C2f -> out4 (stride 16)
                                | up                        ^ (3x3 s2)
    c3 -----------------------> cat -> C2f -> out3 ---------+------------> out3 (stride 8)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cvapps.ultralytics_parts import C2f, Conv


class PAN(nn.Module):
    """Top-down (FPN) then bottom-up (PAN) fusion of three feature maps.

    in_channels: channels of the stride 8, 16, 32 inputs.
    width: base width; outputs have ``(width, 2 * width, 4 * width)`` channels at strides 8/16/32.
    depth: bottlenecks per C2f block.
    forward([c3 (B, C3, H/8, W/8), c4 (B, C4, H/16, W/16), c5 (B, C5, H/32, W/32)])
        -> [out3 (B, w, H/8, W/8), out4 (B, 2w, H/16, W/16), out5 (B, 4w, H/32, W/32)].
    """

    def __init__(self, in_channels: Sequence[int], width: int = 32, depth: int = 1) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"PAN needs three input maps (strides 8/16/32), got {len(in_channels)}")
        c3, c4, c5 = in_channels
        w1, w2, w4 = width, 2 * width, 4 * width
        self.out_channels = (w1, w2, w4)
        self.reduce5 = Conv(c5, w4, 1)          # heavy backbones (2048-ch c5) get cheap from here on
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = C2f(w4 + c4, w2, depth)
        self.td3 = C2f(w2 + c3, w1, depth)
        self.down3 = Conv(w1, w1, 3, 2)
        self.bu4 = C2f(w1 + w2, w2, depth)
        self.down4 = Conv(w2, w2, 3, 2)
        self.bu5 = C2f(w2 + w4, w4, depth)

    @staticmethod
    def _cat_up(small: torch.Tensor, big: torch.Tensor, up: nn.Module) -> torch.Tensor:
        x = up(small)
        if x.shape[-2:] != big.shape[-2:]:
            # Odd input sizes make stride-2 maps round up; crop/pad to the finer map's size.
            x = nn.functional.interpolate(small, size=big.shape[-2:], mode="nearest")
        return torch.cat((x, big), 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        p5 = self.reduce5(c5)
        t4 = self.td4(self._cat_up(p5, c4, self.up))
        out3 = self.td3(self._cat_up(t4, c3, self.up))
        out4 = self.bu4(torch.cat((self._match(self.down3(out3), t4), t4), 1))
        out5 = self.bu5(torch.cat((self._match(self.down4(out4), p5), p5), 1))
        return [out3, out4, out5]

    @staticmethod
    def _match(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == ref.shape[-2:]:
            return x
        return nn.functional.interpolate(x, size=ref.shape[-2:], mode="nearest")
