"""Non-maximum suppression shared by the detection tasks and the trackers' de-duplication.

One function, :func:`class_wise_nms`, with two implementations that keep the same indices (tested):
torchvision's C++ kernel when torchvision is already imported (Faster R-CNN) or the candidate set is
large, else ultralytics' pure-torch NMS, which keeps torchvision's ~1.2 s import off the start-up of a
YOLO run (as ultralytics itself does: its NMS uses torchvision only when something else imported it).
"""

from __future__ import annotations

import sys

import torch

from cvapps import ultralytics_parts

# Above this many candidate boxes torchvision's C++ NMS is worth its import (~1.2 s once); below it
# ultralytics' pure-torch NMS takes well under a millisecond per image.
TORCH_NMS_MAX_BOXES = 256


def class_wise_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices of the boxes kept by class-wise NMS, best score first (``torchvision.ops.batched_nms``).

    boxes: (N, 4) xyxy; scores: (N,); labels: (N,) int (all equal: class-agnostic NMS)."""
    if "torchvision" in sys.modules or len(boxes) > TORCH_NMS_MAX_BOXES:
        from torchvision.ops import batched_nms  # start-up: imported only when it pays

        return batched_nms(boxes, scores, labels, iou)
    return torch_nms(boxes, scores, labels, iou)


def torch_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float) -> torch.Tensor:
    """:func:`class_wise_nms` by ultralytics' pure-torch NMS (a YOLO model's own dependency, already
    loaded) with batched_nms' trick: boxes of different classes are moved apart so they never overlap."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    # torchvision visits equal scores in index order (a stable sort); ranks make the order explicit.
    order = scores.argsort(descending=True, stable=True)
    shifted = (boxes + (labels.to(boxes) * (boxes.max() + 1))[:, None])[order]
    ranks = -torch.arange(len(order), dtype=torch.float32)
    return order[ultralytics_parts.TorchNMS.nms(shifted, ranks, iou)]
