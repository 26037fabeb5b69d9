"""Inference form of a model: each BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with
rescaled weights and a bias (equal up to float rounding). Folding removes a full pass over every
feature map: 5-10% of the forward time of the cvapps YOLO, FCN and multi-task models on the CPU.
ultralytics' predictor does the same to its models (``DetectionModel.fuse``); torch provides the
arithmetic (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`), this module finds the pairs.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _sequential_pairs(module: nn.Module) -> list[tuple[nn.Sequential, int]]:
    """(sequential, i) where item i is a Conv2d and item i + 1 the BatchNorm2d right after it."""
    pairs = []
    for seq in module.modules():
        if isinstance(seq, nn.Sequential):
            items = list(seq)
            pairs += [(seq, i) for i in range(len(items) - 1)
                      if type(items[i]) is nn.Conv2d and type(items[i + 1]) is nn.BatchNorm2d]
    return pairs


def _conv_bn_blocks(module: nn.Module) -> list[nn.Module]:
    """Blocks with ``conv``, ``bn`` and a ``forward_fuse`` that skips ``bn`` (ultralytics' Conv,
    DWConv: the YOLO heads and necks)."""
    return [m for m in module.modules()
            if isinstance(getattr(m, "conv", None), nn.Conv2d) and type(getattr(m, "bn", None)) is nn.BatchNorm2d
            and callable(getattr(m, "forward_fuse", None))]


def fusable(model: nn.Module) -> bool:
    """True when :func:`fuse_batchnorm` would fold at least one BatchNorm."""
    return bool(_sequential_pairs(model) or _conv_bn_blocks(model))


def fuse_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` in eval mode with BatchNorms folded into their convolutions: a copy, so ``model`` itself
    may still be trained, exported or summarised with its BatchNorms; ``inplace=True`` folds ``model``
    itself (an owner that only predicts with it saves the copy, 40-90 ms of a one-image start-up).
    Returns ``model`` itself when there is nothing to fold."""
    if not fusable(model):
        return model
    fused = model.eval() if inplace else copy.deepcopy(model).eval()
    for seq, i in _sequential_pairs(fused):
        seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
        seq[i + 1] = nn.Identity()
    for block in _conv_bn_blocks(fused):
        block.conv = fuse_conv_bn_eval(block.conv, block.bn)
        del block.bn
        block.forward = block.forward_fuse  # type: ignore[method-assign]
    return fused
