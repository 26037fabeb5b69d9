"""The form a model is run in to predict: what the :class:`~cvapps.engine.predict.Predictor` runs.

Two steps, each giving the numbers of the model as trained (up to float rounding):

1. every BatchNorm folded into the convolution before it (:mod:`cvapps.engine.fuse`), on any device;
2. on the CPU, every convolution prepacked for oneDNN, with its activation fused in where that is
   safe (:mod:`cvapps.engine.packed_conv`).

A model under training is never changed: the steps run on a copy unless the caller owns the model
(``inplace=True``: a loaded checkpoint that only predicts saves the copy, 40-90 ms of a start-up).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cvapps.engine.fuse import fusable, fuse_batchnorm
from cvapps.engine.packed_conv import pack_convolutions, packable


def needs_inference_form(model: nn.Module, device: torch.device) -> bool:
    """True when :func:`inference_form` would change ``model`` (something to fold or to pack)."""
    return fusable(model) or (device.type == "cpu" and packable(model))


def inference_form(model: nn.Module, device: torch.device, inplace: bool = False) -> nn.Module:
    """``model`` (already on ``device``) in eval mode with BatchNorms folded and, on the CPU, its
    convolutions packed: a copy unless ``inplace``; ``model`` itself when there is nothing to do."""
    if not needs_inference_form(model, device):
        return model
    form = model.eval() if inplace else copy.deepcopy(model).eval()
    form = fuse_batchnorm(form, inplace=True)
    if device.type == "cpu":
        pack_convolutions(form)
    return form
