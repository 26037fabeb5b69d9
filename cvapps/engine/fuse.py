"""Inference form of a model: each BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with
rescaled weights and a bias (equal up to float rounding). Folding removes a full pass over every
feature map: 5-10% of the forward time of the cvapps YOLO, FCN and multi-task models on the CPU.
ultralytics' predictor does the same to its models (``DetectionModel.fuse``); torch provides the
arithmetic (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`), this module finds the pairs:

* consecutive children of an ``nn.Sequential`` or of torchvision's ``IntermediateLayerGetter`` (the
  ResNet stem of the torchvision backbones), which run their children in order;
* ``convK`` / ``bnK`` of torchvision's ResNet ``BasicBlock`` / ``Bottleneck`` (their forward applies
  ``bnK`` right after ``convK``);
* ultralytics' ``Conv`` / ``DWConv`` blocks (``conv``, ``bn``; run as ``act(conv(x))`` afterwards): which
  blocks, and how they are switched over, is ultralytics-internal and lives in
  :mod:`cvapps.ultralytics_parts` (with its version check, and a fall-back to the blocks' own forward).

The BatchNorm may be ``nn.BatchNorm2d`` or torchvision's ``FrozenBatchNorm2d`` (Faster R-CNN).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cvapps import ultralytics_parts

RESNET_BLOCKS = ("BasicBlock", "Bottleneck")


@dataclass
class _Pair:
    """``parent.<conv_name>`` is a Conv2d whose output goes straight into ``parent.<bn_name>``."""

    parent: nn.Module
    conv_name: str
    bn_name: str
    ultralytics_block: bool = False  # parent is an ultralytics Conv block: ultralytics_parts folds it

    def fold(self) -> None:
        conv, bn = getattr(self.parent, self.conv_name), getattr(self.parent, self.bn_name)
        fused = fuse_conv_bn_eval(conv, bn)
        if self.ultralytics_block:
            ultralytics_parts.fold_block(self.parent, fused)
        else:
            setattr(self.parent, self.conv_name, fused)
            setattr(self.parent, self.bn_name, nn.Identity())


def _is_batchnorm(module: object) -> bool:
    return type(module) is nn.BatchNorm2d or (type(module).__name__ == "FrozenBatchNorm2d"
                                              and type(module).__module__.startswith("torchvision."))


def _from_torchvision(module: nn.Module, names: tuple[str, ...]) -> bool:
    """``module`` is (a subclass of) one of torchvision's classes ``names``; by name, because importing
    torchvision here would cost a YOLO start-up that never loads it."""
    return any(c.__name__ in names and c.__module__.startswith("torchvision.") for c in type(module).__mro__)


def runs_children_in_order(module: nn.Module) -> bool:
    """A plain Sequential (its own forward), or an IntermediateLayerGetter (which also runs its children
    in order, returning some of their outputs)."""
    return ((isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward)
            or _from_torchvision(module, ("IntermediateLayerGetter",)))


def _pairs(model: nn.Module) -> list[_Pair]:
    pairs: list[_Pair] = []
    for module in model.modules():
        if runs_children_in_order(module):
            children = list(module.named_children())
            returned = getattr(module, "return_layers", {})  # a convolution's own output that is returned stays
            pairs += [_Pair(module, a, b) for (a, conv), (b, bn) in zip(children, children[1:])
                      if type(conv) is nn.Conv2d and _is_batchnorm(bn) and a not in returned]
        elif _from_torchvision(module, RESNET_BLOCKS):
            pairs += [_Pair(module, f"conv{k}", f"bn{k}") for k in (1, 2, 3)
                      if type(getattr(module, f"conv{k}", None)) is nn.Conv2d
                      and _is_batchnorm(getattr(module, f"bn{k}", None))]
        elif (ultralytics_parts.foldable_block(module) and type(getattr(module, "conv", None)) is nn.Conv2d
              and _is_batchnorm(getattr(module, "bn", None))):
            pairs.append(_Pair(module, "conv", "bn", ultralytics_block=True))
    return pairs


def fusable(model: nn.Module) -> bool:
    """True when :func:`fuse_batchnorm` would fold at least one BatchNorm."""
    return bool(_pairs(model))


def fuse_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` in eval mode with BatchNorms folded into their convolutions: a copy, so ``model`` itself
    may still be trained, exported or summarised with its BatchNorms; ``inplace=True`` folds ``model``
    itself (an owner that only predicts with it saves the copy, 40-90 ms of a one-image start-up).
    Returns ``model`` itself when there is nothing to fold."""
    if not fusable(model):
        return model
    fused = model.eval() if inplace else copy.deepcopy(model).eval()
    for pair in _pairs(fused):
        pair.fold()
    return fused

