"""Faster R-CNN: torchvision's two-stage detector (RPN + RoI heads) over our backbone + FPN.

The model *is* a ``torchvision.models.detection.FasterRCNN`` (so its state dict has torchvision's
keys ``backbone.body.*``, ``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``) with a forward that
follows the cvapps signature. torchvision's ``GeneralizedRCNNTransform`` keeps its ImageNet
mean/std, so torchvision's pretrained weights see the input they were trained on; images arrive
letterboxed to ``data.imgsz`` and ``min_size = max_size = imgsz`` keeps it from rescaling them.

Pretrained: ``model.detector_weights: FILE`` loads torchvision's COCO ``fasterrcnn_resnet50_fpn``
state dict (with ``model.backbone: resnet50`` and the default anchors/heads); when ``num_classes``
differs, only the class-dependent box predictor is re-initialised, and we say so.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from cvapps.config import ModelConfig, TaskConfig
from cvapps.backbones.weights import load_state, read_state_dict
from cvapps.errors import ConfigError
from cvapps.necks.fpn import BackboneWithFPN
from cvapps.tasks.common import IMAGENET_MEAN, IMAGENET_STD, backbone_from_config
from cvapps.tasks.detection_common import DetectionTask, RawDetections
from cvapps.tasks.registry import TASKS, register_task

# Keys of torchvision's predictor, the only layers whose shape depends on the number of classes.
CLASS_DEPENDENT = ("roi_heads.box_predictor.",)


class FasterRCNNModelConfig(ModelConfig):
    BUILD_ONLY_KEYS = (*ModelConfig.BUILD_ONLY_KEYS, "detector_weights")

    arch: Literal["faster_rcnn"] = "faster_rcnn"
    num_classes: int | None = Field(None, ge=1, description="object classes (no background); default: the dataset's")
    detector_weights: str | None = Field(None, description="torchvision fasterrcnn_resnet50_fpn state dict file")
    norm: Literal["auto", "frozen", "batch"] = Field(
        "auto", description="backbone norm layers: frozen = FrozenBatchNorm2d (torchvision's choice for "
                            "pretrained ResNets); auto = frozen for ResNets with pretrained weights, else batch")
    frozen_bn_eps: float | None = Field(None, ge=0, description="FrozenBatchNorm2d eps; default: 0.0 when "
                                        "detector_weights are loaded (as torchvision does for its COCO_V1 file), else 1e-5")
    fpn_features: list[str] = Field(default_factory=lambda: ["c2", "c3", "c4", "c5"])
    fpn_channels: int = Field(256, ge=8)
    anchor_sizes: list[list[int]] = Field(default_factory=lambda: [[32], [64], [128], [256], [512]],
                                          description="anchor sizes per FPN level (fpn_features + pool)")
    aspect_ratios: list[list[float]] = Field(default_factory=lambda: [[0.5, 1.0, 2.0]] * 5,
                                             description="anchor aspect ratios (h/w) per FPN level")
    rpn_pre_nms_top_n_train: int = Field(2000, ge=1)
    rpn_pre_nms_top_n_test: int = Field(1000, ge=1)
    rpn_post_nms_top_n_train: int = Field(2000, ge=1)
    rpn_post_nms_top_n_test: int = Field(1000, ge=1)
    rpn_batch_size_per_image: int = Field(256, ge=1)
    roi_head_width: int = Field(1024, ge=8, description="TwoMLPHead representation size")
    box_batch_size_per_image: int = Field(512, ge=1, description="RoIs sampled per image for the box loss")
    box_score_thresh: float = Field(0.01, ge=0, le=1, description="detections below this score are dropped")
    box_nms_thresh: float = Field(0.5, gt=0, le=1)
    box_detections_per_img: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _levels(self) -> "FasterRCNNModelConfig":
        levels = len(self.fpn_features) + 1  # + the max-pooled level
        if len(self.anchor_sizes) != levels:
            raise ValueError(f"anchor_sizes needs {levels} lists (one per FPN level incl. pool), got {len(self.anchor_sizes)}")
        if len(self.aspect_ratios) == 1:
            self.aspect_ratios = self.aspect_ratios * levels
        if len(self.aspect_ratios) != levels or len({len(r) for r in self.aspect_ratios}) != 1 \
                or len({len(s) for s in self.anchor_sizes}) != 1:
            raise ValueError("aspect_ratios needs one list per FPN level (or one list for all), and every level "
                             "the same number of sizes and ratios (the RPN head is shared)")
        return self

    def norm_choice(self) -> tuple[bool, float]:
        """(FrozenBatchNorm2d in the backbone?, its eps) as this config asks for."""
        resnet = self.backbone.startswith("resnet")
        pretrained = bool(self.detector_weights or self.backbone_weights or self.pretrained)
        frozen = self.norm == "frozen" or (self.norm == "auto" and resnet and pretrained)
        eps = self.frozen_bn_eps if self.frozen_bn_eps is not None else (0.0 if self.detector_weights else 1e-5)
        return frozen, eps

    def without_build_only(self) -> "FasterRCNNModelConfig":
        # The norm choice depends on whether weights were given: pin it before clearing them.
        frozen, eps = self.norm_choice()
        pinned = self.model_copy(update={"norm": "frozen" if frozen else "batch", "frozen_bn_eps": eps})
        return super(FasterRCNNModelConfig, pinned).without_build_only()


class FasterRCNNConfig(TaskConfig):
    task: Literal["faster_rcnn"] = "faster_rcnn"
    model: FasterRCNNModelConfig = Field(default_factory=FasterRCNNModelConfig)


class FasterRCNNDetector(FasterRCNN):
    """torchvision FasterRCNN with the cvapps forward.

    forward(images float (B, C, H, W) in [0, 1], targets=None):
      training: targets = list of {"boxes": (N, 4) xyxy input pixels, "labels": (N,) 0-based}
        -> {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"};
      eval: list of {"boxes" xyxy input pixels, "scores", "labels" 1-based (0 = background)}.
    """

    def forward(self, images: torch.Tensor, targets: list[dict[str, Any]] | None = None):  # type: ignore[override]
        imgs = list(images.unbind(0))
        if self.training:
            if targets is None:
                raise ValueError("FasterRCNNDetector needs targets in training mode")
            tg = [{"boxes": t["boxes"].float().reshape(-1, 4), "labels": t["labels"].long() + 1} for t in targets]
            return super().forward(imgs, tg)
        return super().forward(imgs)


def build_faster_rcnn(mc: FasterRCNNModelConfig, num_classes: int, imgsz: int) -> FasterRCNNDetector:
    """The detector described by ``mc`` for ``num_classes`` object classes at input ``imgsz``."""
    frozen, eps = mc.norm_choice()
    kwargs = {}
    if frozen:
        if not mc.backbone.startswith("resnet"):
            raise ConfigError(f"config error: model.norm: frozen needs a ResNet backbone, not {mc.backbone!r}")
        kwargs["norm_layer"] = partial(FrozenBatchNorm2d, eps=eps)
    body = backbone_from_config(mc, check_size=max(64, min(imgsz, 256)), **kwargs)
    body.require_strides(tuple(body.strides[f] for f in mc.fpn_features if f in body.strides) or (8,), "Faster R-CNN")
    backbone = BackboneWithFPN(body, mc.fpn_features, mc.fpn_channels, extra_pool=True)
    anchors = AnchorGenerator(tuple(tuple(s) for s in mc.anchor_sizes), tuple(tuple(r) for r in mc.aspect_ratios))
    rpn_head = RPNHead(mc.fpn_channels, anchors.num_anchors_per_location()[0])
    roi_pool = MultiScaleRoIAlign(backbone.featmap_names, output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(mc.fpn_channels * 7 * 7, mc.roi_head_width)
    predictor = FastRCNNPredictor(mc.roi_head_width, num_classes + 1)
    gray = mc.in_channels != 3
    mean = [sum(IMAGENET_MEAN) / 3] * mc.in_channels if gray else list(IMAGENET_MEAN)
    std = [sum(IMAGENET_STD) / 3] * mc.in_channels if gray else list(IMAGENET_STD)
    return FasterRCNNDetector(
        backbone, num_classes=None, min_size=imgsz, max_size=imgsz, image_mean=mean, image_std=std,
        rpn_anchor_generator=anchors, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=mc.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=mc.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=mc.rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=mc.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=mc.rpn_batch_size_per_image,
        box_roi_pool=roi_pool, box_head=box_head, box_predictor=predictor,
        box_score_thresh=mc.box_score_thresh, box_nms_thresh=mc.box_nms_thresh,
        box_detections_per_img=mc.box_detections_per_img, box_batch_size_per_image=mc.box_batch_size_per_image,
    )


def load_detector_weights(model: nn.Module, path: str, log=print) -> None:
    """Load a torchvision Faster R-CNN state dict (``backbone.body.*``, ``backbone.fpn.*``, ``rpn.*``,
    ``roi_heads.*``). Class-dependent tensors of another shape keep their fresh initialisation
    (reported); any other missing, unexpected or mis-shaped key is a CheckpointError."""
    report = load_state(model, read_state_dict(path), path, reinit_prefixes=CLASS_DEPENDENT,
                        what="this Faster R-CNN (torchvision's fasterrcnn_resnet50_fpn needs model.backbone=resnet50 "
                             "and the default anchors/roi_head_width)")
    log(f"loaded {report.loaded} tensors from {path}")
    if report.reinit:
        log(f"num_classes differs from {path}: re-initialised the class-dependent layers "
            f"({', '.join(report.reinit)}); everything else is pretrained")


@register_task
class FasterRCNNTask(DetectionTask):
    name = "faster_rcnn"
    config_class = FasterRCNNConfig
    # (why: the module doc of cvapps.export)
    onnx_refusal = ("export: Faster R-CNN is not exported to ONNX: torchvision's export traces a fixed number of "
                    "images, so the model would not take a dynamic batch; run the .pt checkpoint instead")

    def build_model(self, cfg: FasterRCNNConfig, class_names: list[str]) -> nn.Module:
        mc = cfg.model
        self.check_num_classes(cfg, class_names)
        model = build_faster_rcnn(mc, len(class_names), cfg.data.imgsz)
        if mc.detector_weights:
            load_detector_weights(model, mc.detector_weights)
        return model

    def raw_detections(self, outputs: list[dict[str, torch.Tensor]], conf: float = 0.001,
                       iou: float = 0.5) -> RawDetections:
        # torchvision already ran class-wise NMS (box_nms_thresh); labels are 1-based there.
        return [(o["boxes"], o["scores"], o["labels"] - 1) for o in outputs]


TASK = TASKS[FasterRCNNTask.name]
