"""Appearance embeddings from the detector's own backbone pass (the idea of JDE / FairMOT): no second
network for re-identification.

:func:`attach_embeddings` taps the backbone of a cvapps YOLO model with a forward hook (its finest
feature map, stride 4 on the shipped backbones, keeps the most colour and texture) and wraps the
predictor's task so that, right after each batch's postprocess (same thread, same batch), every
detected box gets ``Detections.data["embedding"]``: the map, centred on its image-wide mean (so the
background and what all objects share cancel out), RoIAligned (``torchvision.ops.roi_align``) inside
the box in network-input pixels, averaged, L2-normalised. ``--track ocsort`` uses it.

Models whose features cannot be reached (ONNX / OpenVINO graphs, Faster R-CNN's internally resized
input, native ultralytics models) are tracked on motion only, with one message saying so.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvapps.analytics.tracking import EMBEDDING

MOTION_ONLY = "tracking: {what} gives no access to its features; ocsort associates on motion only (no appearance)"


class FeatureTap:
    """Keeps the latest input width and finest backbone map of ``model`` (forward hooks)."""

    def __init__(self, model: nn.Module) -> None:
        self.input_w = 0
        self.map: torch.Tensor | None = None
        model.register_forward_pre_hook(self._input)
        model.backbone.register_forward_hook(self._features)

    def _input(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.input_w = int(args[0].shape[-1])

    def _features(self, _module: nn.Module, _args: Any, out: Any) -> None:
        maps = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else [out]
        self.map = max(maps, key=lambda m: m.shape[-1])  # the finest: most colour and shape detail

    def embed(self, boxes_input: list[torch.Tensor]) -> list[torch.Tensor]:
        """(N_i, D) embeddings of each image's boxes (xyxy, network-input pixels) of the last batch, in
        one RoIAlign over the batch. The image-wide mean is taken off the pooled vectors (the same as off
        the map, since RoIAlign averages), so the map itself is never copied."""
        assert self.map is not None
        fmap = self.map
        counts = [len(b) for b in boxes_input]
        if not sum(counts):
            return [torch.zeros(0, fmap.shape[1]) for _ in counts]
        index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        rois = torch.cat([index[:, None].float(), torch.cat(boxes_input).float()], 1).to(fmap.device, fmap.dtype)
        # Imported here: only --track ocsort needs torchvision; a plain YOLO prediction's start-up must not pay ~1.2 s.
        from torchvision.ops import roi_align

        pooled = roi_align(fmap, rois, (1, 1), fmap.shape[-1] / max(1, self.input_w), 2, aligned=True).flatten(1)
        pooled = pooled.float() - fmap.mean((2, 3)).float()[index]
        return list(F.normalize(pooled, dim=1).cpu().split(counts))


class EmbeddingTask:
    """The predictor's task, with :meth:`postprocess` adding ``data["embedding"]`` to each detection;
    every other attribute is the wrapped task's."""

    def __init__(self, task: Any, tap: FeatureTap) -> None:
        self.task, self.tap = task, tap

    def postprocess(self, outputs: Any, metas: list[Any], **options: Any) -> list[Any]:
        predictions = self.task.postprocess(outputs, metas, **options)
        dets = [getattr(pred, "detections", None) for pred in predictions]
        if self.tap.map is None or any(d is None for d in dets):
            return predictions
        embeddings = self.tap.embed([meta.boxes_to_input(d.boxes) for d, meta in zip(dets, metas)])
        for det, emb in zip(dets, embeddings):
            det.data[EMBEDDING] = emb.numpy()
        return predictions

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)


def attach_embeddings(predictor: Any, quiet: bool = False) -> bool:
    """Make ``predictor`` give per-box embeddings; False (with one message unless ``quiet``) when its
    model's features cannot be reached."""
    task, model = getattr(predictor, "task", None), getattr(predictor, "model", None)
    if isinstance(task, EmbeddingTask):
        return True
    name = getattr(task, "name", None)
    reachable = isinstance(model, nn.Module) and isinstance(getattr(model, "backbone", None), nn.Module)
    if not (getattr(task, "backbone_embeddings", False) and reachable):
        if not quiet:
            what = f"a {name} model" if name and isinstance(model, nn.Module) else "this model (an exported graph)"
            print(MOTION_ONLY.format(what=what), file=sys.stderr)
        return False
    predictor.task = EmbeddingTask(task, FeatureTap(model))
    return True
