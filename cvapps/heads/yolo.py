"""The YOLO head, loss and NMS: ultralytics' anchor-free ``Detect`` head, v8 detection loss
(task-aligned assigner + CIoU/DFL box loss + BCE class loss) and NMS behind cvapps' formats.

These are internal ultralytics APIs, imported (with the supported-version check) from
:mod:`cvapps.ultralytics_parts`, the one module that imports ultralytics; their use is wrapped here
and tested in ``tests/test_yolo.py`` so an upgrade that changes them fails loudly there instead of
silently inside a training run.

Formats:
- head training output: ``{"boxes": (B, 4 * reg_max, A), "scores": (B, nc, A), "feats": [maps]}``
  (A = anchors summed over the three levels);
- head eval output: ``(B, 4 + nc, A)``: xywh box centres/sizes in network-input pixels, then
  per-class sigmoid scores;
- our targets: one dict per image with ``boxes`` (N, 4) xyxy network-input pixels and ``labels``
  (N,) 0-based class indices.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import torch
from torch import nn

from cvapps.ultralytics_parts import Detect, non_max_suppression, v8DetectionLoss

# The same ultralytics Detect class runs our head and native models (head_of finds either).
__all__ = ["YoloHead", "YoloLoss", "build_detect", "head_of", "targets_to_ultralytics", "yolo_nms"]


class YoloHead(Detect):
    """ultralytics' ``Detect`` with its layer layout pinned.

    ultralytics' model builder sets ``Detect.legacy`` on the *class* while it parses a model file
    (True for v3/v5/v8/v9 files: plain class-branch convs instead of depthwise ones), so building
    a yolov8n.yaml/.pt in the same process would change the layers of every later ``Detect`` and
    our checkpoints would no longer load. Our head always uses the current (non-legacy) layout.
    """

    legacy = False


def build_detect(num_classes: int, channels: Sequence[int], strides: Sequence[int] = (8, 16, 32),
                 reg_max: int = 16) -> YoloHead:
    """ultralytics' anchor-free head over maps with ``channels`` at ``strides``, ready to train.

    ``Detect`` learns its strides from a dummy pass inside ultralytics' model builder; here they
    are known from the backbone, so we set them and then run its bias initialisation (which needs them).
    """
    head = YoloHead(nc=num_classes, reg_max=reg_max, ch=tuple(int(c) for c in channels))
    head.stride = torch.tensor([float(s) for s in strides])
    head.bias_init()
    return head


class _LossModelShim:
    """The two things ``v8DetectionLoss.__init__`` reads from a model: ``args`` (the box/cls/dfl
    gains) and ``model[-1]`` (the Detect head), plus ``parameters()`` for the device."""

    def __init__(self, head: Detect, box: float, cls: float, dfl: float) -> None:
        self.args = SimpleNamespace(box=box, cls=cls, dfl=dfl)
        self.model = [head]
        self._head = head

    def parameters(self):
        return self._head.parameters()


def targets_to_ultralytics(targets: Sequence[dict[str, torch.Tensor]], input_hw: tuple[int, int],
                           device: torch.device) -> dict[str, torch.Tensor]:
    """Our per-image targets -> ultralytics' flat batch dict.

    ``{"batch_idx": (M,), "cls": (M, 1), "bboxes": (M, 4) xywh normalised by the input (W, H)}``,
    M = boxes in the whole batch. ``input_hw`` must be the size the loss rescales by (see YoloLoss).
    """
    h, w = input_hw
    idx, cls, boxes = [], [], []
    for i, t in enumerate(targets):
        b = t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4)
        idx.append(torch.full((len(b),), float(i), device=device))
        cls.append(t["labels"].to(device=device, dtype=torch.float32).reshape(-1, 1))
        xywh = torch.stack(((b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                            (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h), 1)
        boxes.append(xywh)
    if not targets:
        return {"batch_idx": torch.zeros(0, device=device), "cls": torch.zeros(0, 1, device=device),
                "bboxes": torch.zeros(0, 4, device=device)}
    return {"batch_idx": torch.cat(idx), "cls": torch.cat(cls), "bboxes": torch.cat(boxes)}


class YoloLoss:
    """ultralytics' ``v8DetectionLoss`` behind our target format.

    __call__(head training output dict, targets) -> {"loss_box", "loss_cls", "loss_dfl"}: each a
    scalar, gain-weighted and averaged per image (ultralytics returns them times the batch size,
    for its SGD recipe; the mean keeps our learning rates independent of the batch size).
    """

    def __init__(self, head: Detect, box: float = 7.5, cls: float = 0.5, dfl: float = 1.5) -> None:
        self.head, self.gains = head, (box, cls, dfl)
        self._loss: v8DetectionLoss | None = None

    def _criterion(self, device: torch.device) -> v8DetectionLoss:
        # Built lazily and rebuilt on a device change: v8DetectionLoss pins its tensors to the
        # device the head had when it was created.
        if self._loss is None or self._loss.device != device:
            self._loss = v8DetectionLoss(_LossModelShim(self.head, *self.gains))
        return self._loss

    def __call__(self, preds: dict[str, Any], targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        feats = preds["feats"]
        device = feats[0].device
        crit = self._criterion(device)
        # The loss rescales normalised boxes by (first map size x first stride): normalise by the same.
        stride0 = int(self.head.stride[0])
        input_hw = (feats[0].shape[-2] * stride0, feats[0].shape[-1] * stride0)
        batch = targets_to_ultralytics(targets, input_hw, device)
        # Loss maths in fp32 even under autocast: the assigner's IoU powers underflow in fp16.
        preds32 = {"boxes": preds["boxes"].float(), "scores": preds["scores"].float(), "feats": feats}
        with torch.autocast(device.type, enabled=False):
            total, _items = crit(preds32, batch)
        total = total / max(1, len(targets))
        return {"loss_box": total[0], "loss_cls": total[1], "loss_dfl": total[2]}


def yolo_nms(pred: torch.Tensor | tuple | list, conf: float = 0.25, iou: float = 0.7, num_classes: int = 0,
             max_det: int = 300, agnostic: bool = False, end2end: bool = False) -> list[torch.Tensor]:
    """Per-image NMS with ultralytics' implementation (class-aware unless ``agnostic``).

    pred: ``(B, 4 + nc [+ extra], A)`` xywh in network pixels, or an end-to-end head's
    ``(B, max_det, 6)`` (xyxy, score, class); a tuple/list uses its first element.
    num_classes: nc, so the extra channels of segmentation models (mask coefficients) are ignored.
    Returns one ``(N, 6 [+ extra])`` tensor per image: xyxy network pixels, score, class index.
    """
    if isinstance(pred, (tuple, list)):
        pred = pred[0]
    return non_max_suppression(pred.float(), conf_thres=conf, iou_thres=iou, nc=num_classes,
                               max_det=max_det, agnostic=agnostic, end2end=end2end)


def head_of(model: nn.Module) -> Detect | None:
    """The ultralytics ``Detect`` head inside ``model`` (ours or a native one), or None."""
    return next((m for m in model.modules() if isinstance(m, Detect)), None)
