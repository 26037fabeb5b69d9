"""CPU inference form, second step: convolutions prepacked for oneDNN, each with its activation fused in.

On the CPU, ``nn.Conv2d`` calls oneDNN with the weight in torch's layout, which oneDNN reorders into
its own blocked layout on *every* call, and the activation after it (SiLU, ReLU...) is a second pass
over the whole feature map. :class:`PackedConv2d` reorders the weight once (oneDNN's
``_reorder_convolution_weight``, on the first call, for the input size seen then) and runs convolution
+ bias + activation as one oneDNN primitive (``_convolution_pointwise``, the kernel torch.compile's
CPU backend emits for the same pattern). No library offers this in eager mode, hence this module.
Measured on 2 cores: yolov8n's forward alone 5-12% faster (160 px, batch 8), cvapps detect 1.17-1.38x
ultralytics predict at equal settings (benchmarks/predict_vs_ultralytics.py); outputs equal to float
rounding (tests/test_packed_conv.py).

Which activation may join the convolution before it (the model's numbers must not change):

* ultralytics' ``Conv`` / ``DWConv`` computing ``act(conv(x))`` after their BatchNorm was folded (told
  by :func:`cvapps.ultralytics_parts.runs_act_of_conv`, which holds that ultralytics-internal knowledge);
* in a plain ``nn.Sequential`` (or torchvision's ``IntermediateLayerGetter``): a convolution, then
  only ``nn.Identity`` children (folded BatchNorms), then the activation; not when a layer in
  between is one whose output is returned.

Every other ``nn.Conv2d`` is packed alone. A call outside the packed kernel's reach (autograd, another
device or dtype) runs the reference ``conv2d`` + activation, so the module stays a drop-in.

The two oneDNN ops are torch-private (``torch.ops.mkldnn``): they are used only on a torch at least
:data:`MIN_TORCH` where they exist, and the first time either fails (a torch that changed them), one
warning says so and every packed module, now and later, runs the public ``conv2d`` path instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvapps.engine.fuse import runs_children_in_order
from cvapps.ultralytics_parts import runs_act_of_conv

MIN_TORCH = (2, 2)  # the oldest torch these private ops were tested on (pyproject's lower bound)
_ops = getattr(torch.ops, "mkldnn", None)
AVAILABLE = (tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= MIN_TORCH
             and torch.backends.mkldnn.is_available() and _ops is not None
             and hasattr(_ops, "_convolution_pointwise") and hasattr(_ops, "_reorder_convolution_weight"))
_failed = False  # set at the first failure of the private ops: the public path from then on


def _give_up(exc: Exception) -> None:
    """Turn the packed path off for the process, with one warning."""
    global _failed, AVAILABLE
    if not _failed:
        _failed, AVAILABLE = True, False
        warnings.warn(f"packed oneDNN convolutions failed ({type(exc).__name__}: {str(exc)[:120]}); "
                      "running plain convolutions instead", RuntimeWarning, stacklevel=3)

#: activation module type -> oneDNN post-op name (the ``attr`` of ``_convolution_pointwise``)
POST_OPS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.SiLU: "swish", nn.Hardswish: "hardswish",
                                        nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}


def _post_op(module: nn.Module) -> tuple[str, list[Any]] | None:
    if type(module) in POST_OPS:
        return POST_OPS[type(module)], []
    if type(module) is nn.LeakyReLU:
        return "leaky_relu", [module.negative_slope]
    if type(module) is nn.ReLU6:
        return "hardtanh", [0.0, 6.0]
    return None


class PackedConv2d(nn.Module):
    """``activation(conv(x))`` for a float32 CPU input (B, C, H, W), any memory layout (the output
    keeps the input's); same weights and state-dict keys as the convolution it replaces."""

    def __init__(self, conv: nn.Conv2d, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.activation = activation if activation is not None else nn.Identity()
        self.attr, self.scalars = _post_op(activation) if activation is not None else ("none", [])
        self._packed: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (weight, bias) for oneDNN
        self._packed_from: tuple[int, int] | None = None  # weight's (data_ptr, version) when packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _failed or x.requires_grad or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
            return self._reference(x)
        try:
            return self._packed_forward(x)
        except Exception as exc:  # noqa: BLE001 - torch-private ops: any failure means the public path
            _give_up(exc)
            return self._reference(x)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(F.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                                        self.dilation, self.groups))

    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version)
        if self._packed is None or self._packed_from != key:  # first call, or new weights loaded
            weight = _ops._reorder_convolution_weight(self.weight.detach(), self.padding, self.stride,
                                                      self.dilation, self.groups, list(x.shape))
            self._packed = (weight, self.bias.detach() if self.bias is not None else None)
            self._packed_from = key
        weight, bias = self._packed
        return _ops._convolution_pointwise(x, weight, bias, self.padding, self.stride, self.dilation,
                                           self.groups, self.attr, self.scalars, "")

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles repack on their first call
        return {**self.__dict__, "_packed": None, "_packed_from": None}

    def extra_repr(self) -> str:
        c_out, c_in = self.weight.shape[:2]
        return (f"{c_in * self.groups}, {c_out}, kernel_size={tuple(self.weight.shape[2:])}, stride={tuple(self.stride)}, "
                f"post_op={self.attr}")


def _packable(module: object) -> bool:
    return (type(module) is nn.Conv2d and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def packable(model: nn.Module) -> bool:
    """True when :func:`pack_convolutions` would pack at least one convolution here."""
    return AVAILABLE and any(_packable(m) for m in model.modules())


def pack_convolutions(model: nn.Module) -> int:
    """Replace, in place, each packable ``nn.Conv2d`` of ``model`` by a :class:`PackedConv2d` (with the
    activation after it where that is safe, see the module docstring); returns how many."""
    if not AVAILABLE:
        return 0
    count = 0
    for module in list(model.modules()):
        if runs_act_of_conv(module) and _packable(module.conv) and _post_op(module.act):
            module.conv, module.act = PackedConv2d(module.conv, module.act), nn.Identity()
            count += 1
        elif runs_children_in_order(module):
            count += _pack_in_order(module)
    for module in list(model.modules()):  # the rest: alone
        for name, child in list(module.named_children()):
            if _packable(child):
                setattr(module, name, PackedConv2d(child))
                count += 1
    return count


def _pack_in_order(module: nn.Module) -> int:
    """conv, Identity*, activation children of a module that runs its children in order."""
    children = list(module.named_children())
    returned = set(getattr(module, "return_layers", {}))
    count = 0
    for i, (name, conv) in enumerate(children):
        if not _packable(conv):
            continue
        j = i + 1
        while j < len(children) and type(children[j][1]) is nn.Identity and children[j - 1][0] not in returned:
            j += 1
        if j < len(children) and children[j - 1][0] not in returned and _post_op(children[j][1]):
            act_name, act = children[j]
            setattr(module, name, PackedConv2d(conv, act))
            setattr(module, act_name, nn.Identity())
            count += 1
    return count
