"""``task: multitask`` config (:mod:`cvapps.tasks.multitask`): one backbone, several heads.

Each ``model.heads.<name>`` section mirrors the model keys of the head's single-task config; like
every task config it subclasses the shared sections of :mod:`cvapps.config`, and the task names it
as its ``config_class`` (so config.py, the lowest layer, never imports a task).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cvapps.config import ModelConfig, Section, TaskConfig


class DetectHeadConfig(Section):
    """``model.heads.detect``: the YOLO head (PAN neck + ultralytics Detect, v8 loss)."""

    loss_weight: float = Field(1.0, ge=0, description="weight of the detection losses (box, cls, dfl) in the sum")
    neck_width: int = Field(32, ge=8, description="PAN base width; outputs have (w, 2w, 4w) channels")
    neck_depth: int = Field(1, ge=1, description="bottlenecks per C2f block in the neck")
    reg_max: int = Field(16, ge=1, description="DFL bins per box side")
    box_gain: float = Field(7.5, ge=0)
    cls_gain: float = Field(0.5, ge=0)
    dfl_gain: float = Field(1.5, ge=0)


class SegmentHeadConfig(Section):
    """``model.heads.segment``: the FCN-8s head (1x1 scores + ConvTranspose2d fusion)."""

    loss_weight: float = Field(1.0, ge=0, description="weight of the pixel cross-entropy in the sum")
    hidden: int = Field(0, ge=0, description="width of a 3x3 conv block on the stride-32 feature (0: none)")
    features: Literal["backbone", "neck"] = Field(
        "backbone", description="score the backbone's stride 8/16/32 maps (as task: segment) or the PAN's")


class ClassifyHeadConfig(Section):
    """``model.heads.classify``: image-level multi-label presence of each class (BCE), learned from
    the box labels when the dataset has no image labels."""

    loss_weight: float = Field(0.5, ge=0, description="weight of the presence BCE loss in the sum")
    dropout: float = Field(0.0, ge=0, lt=1)


class HeadsConfig(Section):
    """Which heads run on the shared backbone: a head is on when its section is given (``{}`` for
    the defaults) and off when it is ``null``."""

    detect: DetectHeadConfig | None = Field(default_factory=DetectHeadConfig)
    segment: SegmentHeadConfig | None = Field(default_factory=SegmentHeadConfig)
    classify: ClassifyHeadConfig | None = None

    @model_validator(mode="after")
    def _some_head(self) -> HeadsConfig:
        if not self.names:
            raise ValueError("at least one head (detect, segment, classify) must be on")
        return self

    @property
    def names(self) -> list[str]:
        """The heads that are on, in the fixed order detect, segment, classify."""
        return [name for name in ("detect", "segment", "classify") if getattr(self, name) is not None]


class MultiTaskModelConfig(ModelConfig):
    arch: Literal["multitask"] = "multitask"
    num_classes: int | None = Field(None, ge=1, description="object classes (no background); default: the dataset's")
    heads: HeadsConfig = Field(default_factory=HeadsConfig)


class MultiTaskConfig(TaskConfig):
    task: Literal["multitask"] = "multitask"
    model: MultiTaskModelConfig = Field(default_factory=MultiTaskModelConfig)
