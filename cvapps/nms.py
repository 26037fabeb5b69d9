"""Non-maximum suppression shared by the detection tasks and the trackers' de-duplication.

One function, :func:`class_wise_nms`, with two implementations that keep the same indices (tested):
torchvision's C++ kernel when torchvision is already imported (Faster R-CNN) or the candidate set is
large, else ultralytics' pure-torch NMS, which keeps torchvision's ~1.2 s import off the start-up of a
YOLO run (as ultralytics itself does: its NMS uses torchvision only when something else imported it).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from cvapps import ultralytics_parts

# Above this many candidate boxes torchvision's C++ NMS is worth its import (~1.2 s once); below it
# ultralytics' pure-torch NMS takes well under a millisecond per image.
TORCH_NMS_MAX_BOXES = 256
# Up to this many boxes, agnostic_nms first checks in NumPy whether any pair overlaps at all: a
# frame's handful of tracked boxes usually does not, and a torch op call costs more than the check.
FEW_BOXES = 32


def class_wise_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices of the boxes kept by class-wise NMS, best score first (``torchvision.ops.batched_nms``).

    boxes: (N, 4) xyxy; scores: (N,); labels: (N,) int (all equal: class-agnostic NMS)."""
    if "torchvision" in sys.modules or len(boxes) > TORCH_NMS_MAX_BOXES:
        from torchvision.ops import batched_nms  # start-up: imported only when it pays

        return batched_nms(boxes, scores, labels, iou)
    return torch_nms(boxes, scores, labels, iou)


def agnostic_nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """:func:`class_wise_nms` with every box of one class (the trackers' de-duplication), without
    batched_nms' per-call offset trick (a third of a tracker's NMS cost on a handful of boxes)."""
    if len(boxes) <= FEW_BOXES and not _any_overlap(boxes.numpy(), iou):  # the usual frame: nothing to drop
        return torch.as_tensor(np.argsort(-scores.numpy(), kind="stable"))
    if "torchvision" in sys.modules or len(boxes) > TORCH_NMS_MAX_BOXES:
        from torchvision.ops import nms  # start-up: imported only when it pays

        return nms(boxes, scores, iou)
    return torch_nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.long), iou)


def box_intersection_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas of xyxy boxes, (len(a), len(b)), in NumPy."""
    a, b = a.reshape(-1, 4), b.reshape(-1, 4)
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(hi - lo, 0.0)
    return wh[..., 0] * wh[..., 1]  # not np.prod: its reduction set-up dominates on a few boxes


def box_area_numpy(boxes: np.ndarray) -> np.ndarray:
    boxes = boxes.reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes, (len(a), len(b)), in NumPy: for the trackers' few boxes per frame, where a
    torch op's call overhead (torchvision.ops.box_iou) costs more than the arithmetic."""
    inter = box_intersection_numpy(a, b)
    return inter / np.maximum(box_area_numpy(a)[:, None] + box_area_numpy(b)[None, :] - inter, 1e-9)


def _any_overlap(xyxy: np.ndarray, iou: float) -> bool:
    """Does any pair of the boxes overlap by more than ``iou``? (Then NMS would drop one.)"""
    overlap = box_iou_numpy(xyxy, xyxy)
    np.fill_diagonal(overlap, 0.0)
    return bool((overlap > iou).any())


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
