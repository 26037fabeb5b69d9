"""YOLO on the shared backbone: backbone (stride 8/16/32) -> FPN+PAN neck -> ultralytics ``Detect``.

Training loss is ultralytics' v8 detection loss (task-aligned assigner, CIoU + DFL box loss, BCE
class loss) and NMS is ultralytics' too, all through :mod:`cvapps.heads.yolo`. Datasets, COCO
evaluation and the mapping of boxes back to original pixels (letterbox) are the detection
tasks' shared ones (:class:`~cvapps.tasks.detection_common.DetectionTask`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from cvapps.config import ModelConfig, TaskConfig
from cvapps.errors import ConfigError
from cvapps.heads.yolo import YoloLoss, build_detect, yolo_nms
from cvapps.necks.pan import PAN
from cvapps.tasks.base import OnnxExport
from cvapps.tasks.common import Normalize, backbone_from_config
from cvapps.tasks.detection_common import DetectionTask, RawDetections
from cvapps.tasks.registry import TASKS, register_task

STRIDES = (8, 16, 32)
# the exported graph's output (also a multitask model's "detect" output)
PREDICTIONS_DOC = "float32 (B, 4 + K, A): xywh centre/size in input pixels + class scores, before NMS"


class YoloModelConfig(ModelConfig):
    arch: Literal["yolo"] = "yolo"
    num_classes: int | None = Field(None, ge=1, description="object classes; default: the dataset's")
    neck_width: int = Field(32, ge=8, description="PAN base width; outputs have (w, 2w, 4w) channels")
    neck_depth: int = Field(1, ge=1, description="bottlenecks per C2f block in the neck")
    reg_max: int = Field(16, ge=1, description="DFL bins per box side (1: plain regression, no DFL)")
    box_gain: float = Field(7.5, ge=0, description="weight of the CIoU box loss")
    cls_gain: float = Field(0.5, ge=0, description="weight of the BCE class loss")
    dfl_gain: float = Field(1.5, ge=0, description="weight of the distribution focal loss")


class YoloConfig(TaskConfig):
    task: Literal["yolo"] = "yolo"
    model: YoloModelConfig = Field(default_factory=YoloModelConfig)


class YoloDetector(nn.Module):
    """images (B, C, H, W) float in [0, 1] (H, W multiples of 32).

    train mode with targets (list of {"boxes" (N, 4) xyxy network px, "labels" (N,) 0-based}):
        -> {"loss_box", "loss_cls", "loss_dfl"} (scalars);
    eval mode -> (B, 4 + nc, A) raw predictions: xywh (centre, size) in network-input pixels and
        per-class sigmoid scores, A = H*W/8^2 + H*W/16^2 + H*W/32^2 anchor points.
    """

    def __init__(self, backbone: nn.Module, neck: PAN, head: nn.Module, features: list[str], in_channels: int,
                 gains: tuple[float, float, float]) -> None:
        super().__init__()
        self.normalize = Normalize(in_channels)
        self.backbone, self.neck, self.head = backbone, neck, head
        self.features = features
        self.criterion = YoloLoss(head, *gains)

    def forward(self, images: torch.Tensor, targets: list[dict[str, Any]] | None = None):
        feats = self.backbone(self.normalize(images))
        out = self.head(self.neck([feats[name] for name in self.features]))
        if self.training:
            if targets is None:
                return out
            return self.criterion(out, targets)
        return out[0] if isinstance(out, tuple) else out  # (y, raw dict): keep y only


@register_task
class YoloTask(DetectionTask):
    cpu_channels_last = True  # measured: 10-40% faster than NCHW on the CPU
    name = "yolo"
    backbone_embeddings = True
    config_class = YoloConfig
    # boxes are input pixels (up to imgsz): 1e-3 px
    onnx = OnnxExport((("predictions", PREDICTIONS_DOC),), parity_atol=1e-3)

    def build_model(self, cfg: YoloConfig, class_names: list[str]) -> nn.Module:
        mc = cfg.model
        self.check_num_classes(cfg, class_names)
        if cfg.data.imgsz % STRIDES[-1]:
            raise ConfigError(f"config error: data.imgsz: YOLO needs a multiple of 32, got {cfg.data.imgsz}")
        backbone = backbone_from_config(mc, check_size=cfg.data.imgsz)
        infos = backbone.require_strides(STRIDES, "YOLO")
        neck = PAN([f.channels for f in infos], mc.neck_width, mc.neck_depth)
        head = build_detect(len(class_names), neck.out_channels, STRIDES, mc.reg_max)
        return YoloDetector(backbone, neck, head, [f.name for f in infos], mc.in_channels,
                            (mc.box_gain, mc.cls_gain, mc.dfl_gain))

    raw_nms_at_iou = True  # ultralytics' NMS, class-wise at the iou given

    def raw_detections(self, outputs: torch.Tensor, conf: float = 0.001, iou: float = 0.5) -> RawDetections:
        """(B, 4 + nc, A) -> per image (boxes xyxy network px, scores, labels) after ultralytics' NMS."""
        rows = yolo_nms(outputs, conf=conf, iou=iou, num_classes=outputs.shape[1] - 4, max_det=300)
        return [(r[:, :4], r[:, 4], r[:, 5].long()) for r in rows]


TASK = TASKS[YoloTask.name]
