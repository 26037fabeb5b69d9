"""Classification head: global pooling (or flatten) -> [hidden Dense layers] -> dropout -> Dense."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """(B, C, h, w) feature map -> (B, num_classes) logits.

    pool="avg": global average pooling, works at any input size (transfer learning default).
    pool="flatten": keeps every position as in LeNet/the course convnet, so ``in_hw`` (h, w) is fixed.
    hidden: widths of Dense+ReLU layers before the output (LeNet's 120, 84).
    """

    def __init__(self, in_channels: int, num_classes: int, pool: Literal["avg", "flatten"] = "avg",
                 dropout: float = 0.0, hidden: list[int] | None = None, in_hw: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.Identity()
        self.flatten = nn.Flatten()
        width = in_channels if pool == "avg" else in_channels * in_hw[0] * in_hw[1]
        layers: list[nn.Module] = []
        for h in hidden or []:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.hidden = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.hidden(self.flatten(self.pool(x)))))
