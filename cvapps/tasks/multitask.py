"""One backbone, several heads, one forward: detect (YOLO), segment (FCN-8s) and classify (presence).

::

    images -> Normalize -> backbone (built once) -> c3/c4/c5 (strides 8/16/32)
                 |-> PAN neck (built once) -> ultralytics Detect      "detect":   (B, 4 + K, A)
                 |-> FCN8sHead (ConvTranspose2d fusion)               "segment":  (B, 1 + K, H, W)
                 '-> ClassifierHead on c5 (avg pool, K sigmoid logits) "classify": (B, K)

The heads are the single-task modules (:mod:`cvapps.heads`, :mod:`cvapps.necks`); the losses and
postprocessing are the single-task ones too (YOLO's v8 loss + NMS, FCN's masked cross-entropy +
mask mapping), so a multi-task model scores exactly as its parts would. ``K`` = the detection
classes; the segmentation classes are ``["background", *class_names]`` (mask value c = class c - 1).

``model.heads`` picks the heads (config: :class:`cvapps.tasks.multitask_config.HeadsConfig`); in training the model
returns each head's losses times ``model.heads.<name>.loss_weight``; images without boxes
(``has_boxes=False``) add no detection/presence loss and pixels without a mask (255) no pixel loss.
``best.pt`` is chosen by ``score`` = mean of mAP50-95, mIoU and presence F1 over the heads that
are on (:mod:`cvapps.metrics.multitask`).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cvapps.data.letterbox import PAD_VALUE, LetterboxMeta
from cvapps.data.multitask import MultiTaskDataset, combine, find_masks
from cvapps.errors import CheckpointError, ConfigError, DataError
from cvapps.heads.classifier import ClassifierHead
from cvapps.heads.fcn import FCN8sHead, pad_to_multiple
from cvapps.heads.yolo import YoloLoss, build_detect
from cvapps.metrics.multitask import MultiTaskMetric
from cvapps.necks.pan import PAN
from cvapps.structures import Prediction, Presence
from cvapps.tasks.base import DatasetSplits, OnnxExport, Task
from cvapps.tasks.common import Normalize, backbone_from_config
from cvapps.tasks.detection_common import DetectionGT
from cvapps.tasks.multitask_config import HeadsConfig, MultiTaskConfig
from cvapps.tasks.registry import TASKS, register_task
from cvapps.tasks.segment import TASK as SEGMENT
from cvapps.tasks.segment import (
    _cross_entropy as masked_cross_entropy,  # the one masked CE (255 ignored)
)
from cvapps.tasks.yolo import PREDICTIONS_DOC, STRIDES
from cvapps.tasks.yolo import TASK as YOLO

PARTS = ("detect", "segment")  # what `cvapps detect` / `cvapps segment` take from a multi-task model
HEAD_PARTS = {"detect": "detections", "segment": "semantic", "classify": "presence"}  # head -> prediction part
#: The exported graph: one output per head that is on, named after the head.
HEAD_OUTPUTS: dict[str, tuple[str, str]] = {
    "detect": ("detect", PREDICTIONS_DOC),
    "segment": ("segment", "float32 (B, 1 + K, S, S) per-pixel logits, class 0 = background"),
    "classify": ("classify", "float32 (B, K) presence logits (sigmoid: probability that the class is in the image)"),
}


class MultiTaskModel(nn.Module):
    """images (B, C, H, W) float in [0, 1] (any H, W; padded to a multiple of 32 inside).

    train mode with targets (list of dicts: "boxes" (N, 4) xyxy network px, "labels" (N,),
    "mask" (H, W) int64 with 255 = ignore, "has_boxes" bool) -> weighted losses
    {"loss_box", "loss_cls", "loss_dfl", "loss_seg", "loss_presence"} of the heads that are on;
    eval mode -> {"detect": (B, 4 + K, A), "segment": (B, 1 + K, H, W), "classify": (B, K)}.
    """

    def __init__(self, backbone: nn.Module, heads: HeadsConfig, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        infos = backbone.require_strides(STRIDES, "the multi-task model")
        self.features = [f.name for f in infos]
        channels = [f.channels for f in infos]
        self.normalize = Normalize(in_channels)
        self.backbone = backbone
        seg_on_neck = heads.segment is not None and heads.segment.features == "neck"
        det = heads.detect
        self.neck = (PAN(channels, det.neck_width if det else 32, det.neck_depth if det else 1)
                     if det is not None or seg_on_neck else None)
        self.seg_on_neck = seg_on_neck
        self.heads = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self.criterion: YoloLoss | None = None
        if det is not None:
            self.heads["detect"] = build_detect(num_classes, self.neck.out_channels, STRIDES, det.reg_max)
            self.criterion = YoloLoss(self.heads["detect"], det.box_gain, det.cls_gain, det.dfl_gain)
            self.weights["detect"] = det.loss_weight
        if heads.segment is not None:
            seg_in = self.neck.out_channels if seg_on_neck else channels
            self.heads["segment"] = FCN8sHead(tuple(seg_in), num_classes + 1, heads.segment.hidden)
            self.weights["segment"] = heads.segment.loss_weight
        if heads.classify is not None:
            self.heads["classify"] = ClassifierHead(channels[-1], num_classes, "avg", heads.classify.dropout)
            self.weights["classify"] = heads.classify.loss_weight
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor, targets: list[dict[str, Any]] | None = None):
        h, w = images.shape[-2:]
        # Pad with the letterbox grey (as the FCN does) so the padding looks like training's.
        x = pad_to_multiple(images, FCN8sHead.max_stride, PAD_VALUE / 255)
        feats = self.backbone(self.normalize(x))  # the one backbone pass every head shares
        maps = [feats[name] for name in self.features]
        pan = self.neck(maps) if self.neck is not None else None
        out: dict[str, Any] = {}
        if "detect" in self.heads:
            out["detect"] = self.heads["detect"](pan)
        if "segment" in self.heads:
            out["segment"] = self.heads["segment"](tuple(pan if self.seg_on_neck else maps), (h, w))
        if "classify" in self.heads:
            out["classify"] = self.heads["classify"](maps[-1])
        if self.training and targets is not None:
            return self.losses(out, targets)
        if not self.training and isinstance(out.get("detect"), tuple):
            out["detect"] = out["detect"][0]  # (y, raw dict): keep y only, as YoloDetector
        return out

    def losses(self, out: dict[str, Any], targets: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Each head's losses times its weight; a head with nothing to learn from in this batch
        gives 0 (with a graph, so every parameter still gets a gradient)."""
        losses: dict[str, torch.Tensor] = {}
        boxed = [i for i, t in enumerate(targets) if t.get("has_boxes", True)]
        if "detect" in out:
            pred, wt = out["detect"], self.weights["detect"]
            if len(boxed) < len(targets):
                idx = torch.tensor(boxed, dtype=torch.long, device=pred["scores"].device)
                pred = {"boxes": pred["boxes"][idx], "scores": pred["scores"][idx],
                        "feats": [f[idx] for f in pred["feats"]]}
            if boxed:
                det = self.criterion(pred, [targets[i] for i in boxed])
            else:
                zero = out["detect"]["scores"].float().sum() * 0.0
                det = {"loss_box": zero, "loss_cls": zero, "loss_dfl": zero}
            losses.update({k: wt * v for k, v in det.items()})
        if "segment" in out:
            masks = torch.stack([t["mask"] for t in targets]).to(out["segment"].device)
            losses["loss_seg"] = self.weights["segment"] * masked_cross_entropy(out["segment"], masks)
        if "classify" in out:
            logits = out["classify"].float()
            if boxed:
                present = torch.zeros(len(boxed), self.num_classes, device=logits.device)
                for row, i in enumerate(boxed):
                    present[row, targets[i]["labels"].long()] = 1.0
                loss = F.binary_cross_entropy_with_logits(logits[boxed], present)
            else:
                loss = logits.sum() * 0.0
            losses["loss_presence"] = self.weights["classify"] * loss
        return losses


@dataclass
class MultiTaskGT(DetectionGT):
    """``DatasetSplits.val_extra``: the detection ground truth plus the heads to evaluate."""

    heads: list[str] = field(default_factory=list)


def split_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """Eval outputs as a dict by head: the model's dict as is, or an ONNX model's tuple (one output
    per head), told apart by rank: 3-D detect, 4-D segment, 2-D classify."""
    if isinstance(outputs, dict):
        return outputs
    outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    by_rank = {3: "detect", 4: "segment", 2: "classify"}
    return {by_rank[o.ndim]: o for o in outs}


@register_task
class MultiTask(Task):
    cpu_channels_last = True  # measured: 10-40% faster than NCHW on the CPU
    name = "multitask"
    config_class = MultiTaskConfig
    primary_metric = "score"
    resize_mode = "letterbox"
    # COCO's protocol for the boxes (as the detection tasks); masks take the argmax anyway.
    eval_options = {"conf": 0.001, "iou": 0.5, "max_det": 100}
    parts = frozenset(HEAD_PARTS.values())  # those of the heads that are on: parts_of()
    commands = frozenset(PARTS)  # as its detector or segmenter: as_part()
    postprocess_options = frozenset({"conf", "iou", "max_det", "presence_conf"})
    onnx = OnnxExport(tuple(HEAD_OUTPUTS.values()), parity_atol=1e-3)  # the detect output's pixels, as yolo's

    def parts_of(self, raw_config: dict[str, Any] | None) -> frozenset[str]:
        if self.part is not None or not raw_config:
            return self.parts
        return frozenset(HEAD_PARTS[head] for head in heads_of(raw_config))

    def as_part(self, loaded: Any, part: str) -> Any:
        super().as_part(loaded, part)  # a part it serves
        return select_part(loaded, part)

    def onnx_outputs(self, model: nn.Module) -> list[tuple[str, str]]:
        return [HEAD_OUTPUTS[name] for name in model.heads]  # in the model's head order, as it returns them

    def build_model(self, cfg: MultiTaskConfig, class_names: list[str]) -> nn.Module:
        mc = cfg.model
        YOLO.check_num_classes(cfg, class_names)
        if cfg.data.imgsz % STRIDES[-1]:
            raise ConfigError(f"config error: data.imgsz: the multi-task model needs a multiple of 32, "
                              f"got {cfg.data.imgsz}")
        backbone = backbone_from_config(mc, check_size=cfg.data.imgsz)
        return MultiTaskModel(backbone, mc.heads, len(class_names), mc.in_channels)

    def build_datasets(self, cfg: MultiTaskConfig, val_only: bool = False) -> DatasetSplits:
        """The detection splits (COCO or YOLO layout; held-out val as the detection tasks) with
        each image's mask joined in (see :mod:`cvapps.data.multitask`)."""
        det = YOLO.build_datasets(cfg, val_only=val_only)  # the detection tasks' split and check rules
        root, names = Path(cfg.data.root), list(det.class_names)
        ids = list(det.val_extra.category_ids)
        want_masks = cfg.model.heads.segment is not None
        masks: dict[str, dict] = {}
        for split in ("train", "val"):
            if want_masks and not (val_only and split == "train"):
                masks[split], skipped = find_masks(root, split, len(names) + 1, ids)
                for path, reason in skipped:
                    print(f"skipped mask {path}: {reason}", file=sys.stderr)
        val_masks = masks.get("val") or masks.get("train", {})
        val_items = combine(det.val.split, val_masks, mask_only=bool(masks.get("val")))
        train = None
        if det.train is not None:
            held = {str(Path(r.path).resolve()) for r in det.val.split.records}
            train_masks = {k: v for k, v in masks.get("train", {}).items() if k not in held}
            train = MultiTaskDataset(combine(det.train.split, train_masks), det.train.pipeline)
        if want_masks and not any(it.mask for it in (train.items if train else val_items)):
            raise DataError(f"{root}: the segment head needs masks: ROOT/masks/<split>/<stem>.png or COCO "
                            "segmentations in ROOT/annotations/<split>.json; none found")
        extra = MultiTaskGT(det.val_extra.gt, ids, names, heads=cfg.model.heads.names)
        return DatasetSplits(train, MultiTaskDataset(val_items, det.val.pipeline), names, val_extra=extra)

    def build_metric(self, splits: DatasetSplits) -> MultiTaskMetric:
        extra: MultiTaskGT = splits.val_extra
        return MultiTaskMetric(extra.heads, extra.gt, splits.class_names, list(extra.category_ids))

    def eval_items(self, dataset: MultiTaskDataset):
        return dataset.eval_items()

    def postprocess(self, outputs: Any, metas: list[LetterboxMeta], conf: float = 0.25, iou: float = 0.5,
                    max_det: int = 300, presence_conf: float = 0.5, **_: Any) -> list[Prediction]:
        """Raw outputs -> per image a :class:`Prediction` (original pixels) with a part per head:
        ``detections`` by the YOLO task's postprocess (``conf``, ``iou``, ``max_det``), ``semantic``
        by the segment task's (its values named ``["background", *names]``: ``extra_background``),
        ``presence``: the classes whose probability >= ``presence_conf``."""
        outs = split_outputs(outputs)
        n = len(metas)
        dets = ([p.detections for p in YOLO.postprocess(outs["detect"], metas, conf=conf, iou=iou, max_det=max_det)]
                if "detect" in outs else [None] * n)
        segs = [None] * n
        if "segment" in outs:  # mask value v is class v - 1 of the names (0: background)
            segs = [dataclasses.replace(p.semantic, extra_background=True)
                    for p in SEGMENT.postprocess(outs["segment"], metas)]
        presence: list[Presence | None] = [None] * n
        if "classify" in outs:
            probs = outs["classify"].float().sigmoid().cpu()
            presence = [Presence(torch.nonzero(p >= presence_conf).flatten(), p.numpy()) for p in probs]
        return [Prediction(detections=d, semantic=s, presence=pr) for d, s, pr in zip(dets, segs, presence)]


class MultiTaskPart(MultiTask):
    """A multi-task model seen as one of its parts (``cvapps detect`` / ``cvapps segment``); each
    subclass declares that part alone."""

    def as_part(self, loaded: Any, part: str) -> Any:
        return Task.as_part(self, loaded, part)  # already the part (or a refusal)

    def postprocess(self, outputs: Any, metas: list[LetterboxMeta], **options: Any) -> list[Any]:
        """Just this part of each prediction, as the single-task model's postprocess makes it."""
        head, task = ("detect", YOLO) if self.part == "detect" else ("segment", SEGMENT)
        outs = split_outputs(outputs)
        if head not in outs:
            return [Prediction() for _ in metas]
        wanted = {k: v for k, v in options.items() if k in ("conf", "iou", "max_det")} if head == "detect" else {}
        return task.postprocess(outs[head], metas, **wanted)


class MultiTaskBoxes(MultiTaskPart):
    part = "detect"
    parts = frozenset({"detections"})
    commands = frozenset({"detect"})
    tracks = True  # as `cvapps detect --track` tracks them


class MultiTaskMasks(MultiTaskPart):
    part = "segment"
    parts = frozenset({"semantic"})
    commands = frozenset({"segment"})


PART_TASKS: dict[str, MultiTaskPart] = {"detect": MultiTaskBoxes(), "segment": MultiTaskMasks()}


def heads_of(raw_config: dict[str, Any] | None) -> list[str]:
    """The heads a stored multi-task config has on."""
    return MultiTaskConfig.model_validate(raw_config or {}).model.heads.names if raw_config else []


def select_part(loaded: Any, part: str) -> Any:
    """A loaded model (:class:`cvapps.engine.load.LoadedModel`) of task multitask as its ``part``
    ("detect": Detections with the class names; "segment": SegmentationMask with
    ``["background", *names]``); any other model is returned unchanged."""
    if loaded.task.name != "multitask":
        return loaded
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if part not in heads_of(loaded.raw_config):
        raise CheckpointError(f"{loaded.source} is a multitask model without a {part} head "
                              f"(heads: {', '.join(heads_of(loaded.raw_config))})")
    names, ids = list(loaded.class_names), loaded.category_ids
    if part == "segment":
        ids = [0, *(ids or range(1, len(names) + 1))]
        names = ["background", *names]
    return dataclasses.replace(loaded, task=PART_TASKS[part], class_names=names, category_ids=ids)


TASK = TASKS[MultiTask.name]
