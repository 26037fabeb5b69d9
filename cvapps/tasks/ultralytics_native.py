"""Native ultralytics models (yolov8n.pt, yolo11n.pt, *-seg.pt, *.yaml) through cvapps.

Two ways in:

* **Prediction** — :func:`native_detector` wraps the ultralytics model's ``nn.Module`` so our
  predictor (through :func:`cvapps.engine.load.load_model`), sources and sinks run it: our letterbox (the same
  grey-114 square letterbox ultralytics uses), ultralytics' NMS, boxes mapped back to original
  pixels, and :class:`~cvapps.structures.Detections` out, exactly as for our own detectors.
  Segmentation models also return instance masks (``Detections.masks``, original pixels), made
  from the head's mask coefficients and prototypes by ultralytics' ``process_mask`` /
  ``scale_masks`` through our letterbox meta.
* **Training** — ``task: ultralytics`` / ``model.arch: ultralytics`` configs train with ultralytics'
  own trainer (:meth:`UltralyticsTask.train_external`, called by ``cvapps train``). The dataset
  (COCO or YOLO layout) is mirrored into ``OUT/dataset`` as YOLO txt labels with symbolic links
  to the images, so ultralytics never writes label caches or converted files into the user's data.

Published names: a bare ``yolov8n.pt`` that is not on disk is fetched by ultralytics' downloader
when online (:func:`cvapps.tasks.ultralytics_files.resolve_weights`), offline it is a one-line
error naming where to put the file; ``YOLO(...)`` is never called for it (it would unpickle the
download in full). ``.yaml`` model files build a randomly initialised model with no network.
``.pt`` files are read without running code (:mod:`cvapps.tasks.ultralytics_files`); ``model.model``
of a ``task: ultralytics`` config too.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import yaml
from pydantic import Field
from torch import nn

from cvapps.checkpoint import atomic_write, atomic_write_text
from cvapps.config import ModelConfig, TaskConfig
from cvapps.data.check import available_splits, load_detection_split
from cvapps.data.letterbox import LetterboxMeta
from cvapps.errors import ConfigError, CvappsError, DataError
from cvapps.formats.yolo import write_data_yaml, write_yolo_labels
from cvapps.heads.yolo import yolo_nms
from cvapps.io.safe_write import check_tree, copy_file, ensure_dir, fresh_dir, open_dir
from cvapps.structures import Detections, Prediction
from cvapps.tasks.detection_common import DetectionTask
from cvapps.tasks.registry import TASKS, register_task
from cvapps.tasks.ultralytics_files import YAML_SUFFIXES, load_native, refusal, trusted
from cvapps.ultralytics_parts import (
    YOLO,
    coco80_to_coco91_class,
    coco_class_names,
    guess_model_task,
    ops,
)

# --- config ---------------------------------------------------------------------------------------
# Key of the mirrored data.yaml naming the user's dataset (ultralytics ignores it).
SOURCE_KEY = "cvapps_source"
TRAINER_DIR = "ultralytics"  # OUT/<this>: the folder ultralytics' trainer writes (weights/, results.csv)


def trained_on(train_args: dict[str, Any]) -> str | None:
    """The dataset root a ``cvapps train`` run of ultralytics used (from the mirror's data.yaml)."""
    data = train_args.get("data")
    if not isinstance(data, str) or not Path(data).is_file():
        return None
    try:
        spec = yaml.safe_load(Path(data).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    source = spec.get(SOURCE_KEY) if isinstance(spec, dict) else None
    return str(source) if isinstance(source, str) and Path(source).is_dir() else None


class UltralyticsModelConfig(ModelConfig):
    arch: Literal["ultralytics"] = "ultralytics"
    model: str = Field("yolov8n.yaml", description="ultralytics model: a .yaml (random init) or a local .pt file")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="extra keyword arguments passed verbatim to ultralytics' YOLO.train (e.g. mosaic, close_mosaic)")


class UltralyticsConfig(TaskConfig):
    task: Literal["ultralytics"] = "ultralytics"
    model: UltralyticsModelConfig = Field(default_factory=UltralyticsModelConfig)


# --- the model ---------------------------------------------------------------------------------
class NativeDetector(nn.Module):
    """An ultralytics DetectionModel/SegmentationModel behind the cvapps model signature.

    forward(images (B, 3, H, W) float in [0, 1] RGB) -> raw head output: ``(B, 4 + nc, A)`` with
    xywh in network pixels, or ``(B, max_det, 6)`` (xyxy, score, class) for end-to-end heads;
    segmentation models return ``(that with 32 mask coefficients appended per row, prototypes
    (B, 32, H/4, W/4))``. ultralytics models normalise by /255 only, as our loader delivers.
    """

    def __init__(self, net: nn.Module, num_classes: int, end2end: bool = False) -> None:
        super().__init__()
        self.net, self.num_classes, self.end2end = net, num_classes, end2end

    def forward(self, images: torch.Tensor, targets: Any = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.training and targets is not None:
            raise CvappsError("native ultralytics models train with their own trainer: use a config with task: ultralytics")
        out = self.net(images)
        # (y, raw) for detect, ((y, proto), raw) for segment: keep y, and proto where there is one.
        if isinstance(out, (tuple, list)) and isinstance(out[0], (tuple, list)) and len(out[0]) == 2 \
                and isinstance(out[0][1], torch.Tensor) and out[0][1].ndim == 4:
            return out[0][0], out[0][1]
        while isinstance(out, (tuple, list)):
            out = out[0]
        return out


def native_detector(spec: str | os.PathLike, fuse: bool = True, trust: bool = False
                    ) -> tuple[NativeDetector, list[str], int, dict[str, Any]]:
    """(model in eval mode, class names, the model's training image size, its checkpoint dict)
    for an ultralytics model file or YAML; ``.pt`` files are read without running code."""
    net, ckpt = load_native(spec, trust)
    task = getattr(net, "task", None) if isinstance(getattr(net, "task", None), str) else guess_model_task(net)
    if task not in ("detect", "segment"):
        what = f"an ultralytics {task} model" if isinstance(task, str) and task else \
            f"a {type(net).__name__} whose ultralytics task cannot be told (not a detect or segment model)"
        raise CvappsError(f"{spec} is {what}; cvapps runs ultralytics detect and segment models only")
    if fuse and hasattr(net, "fuse"):
        net = net.fuse(verbose=False)  # conv+BN folding, as ultralytics' own predictor does
    net.eval()
    names_map = net.names if isinstance(net.names, dict) else dict(enumerate(net.names))
    names = [str(names_map[i]) for i in sorted(names_map)]
    head = net.model[-1]
    args = net.args if isinstance(getattr(net, "args", None), dict) else dict(ckpt.get("train_args") or {})
    imgsz = args.get("imgsz", 640)
    imgsz = int(imgsz if isinstance(imgsz, int) else max(imgsz))
    return NativeDetector(net, len(names), bool(getattr(head, "end2end", False))), names, imgsz, ckpt


def coco_category_ids(names: list[str]) -> list[int] | None:
    """COCO's 91-id scheme for models trained on COCO's 80 classes (so predictions_coco.json
    matches instances_val2017.json); None (index + 1) for anything else."""
    try:
        coco = coco_class_names()
    except Exception:  # noqa: BLE001 - layout of the ultralytics package changed: fall back to index + 1
        return None
    if len(names) == 80 and names == coco[:80]:
        return list(coco80_to_coco91_class())
    return None


# --- the task -------------------------------------------------------------------------------------
@register_task
class UltralyticsTask(DetectionTask):
    """``task: ultralytics``: predict and evaluate native models (datasets and COCO metric are the
    detection tasks'); train with ultralytics' trainer."""
    cpu_channels_last = True  # measured: 10-40% faster than NCHW on the CPU

    name = "ultralytics"
    config_class = UltralyticsConfig
    primary_metric = "map50"
    resize_mode = "letterbox"
    eval_options = {"conf": 0.001, "iou": 0.7, "max_det": 100}  # ultralytics' val NMS IoU
    postprocess_options = frozenset({"conf", "iou", "max_det", "agnostic"})
    trains_externally = True  # with ultralytics' trainer: train_external()
    label = "a native ultralytics detection"

    def __init__(self, num_classes: int | None = None, end2end: bool = False) -> None:
        # Set per model by the loader: segmentation outputs carry 32 mask coefficients
        # after the class scores, so NMS must know where the classes end.
        self.num_classes, self.end2end = num_classes, end2end

    def build_model(self, cfg: UltralyticsConfig, class_names: list[str]) -> nn.Module:
        model, _, _, _ = native_detector(cfg.model.model, fuse=False, trust=trusted())
        return model

    def postprocess(self, outputs: torch.Tensor, metas: list[LetterboxMeta], conf: float = 0.25,
                    iou: float = 0.7, max_det: int = 300, agnostic: bool = False, **_: Any) -> list[Prediction]:
        """Raw head output (see :class:`NativeDetector`) -> one Prediction per image, its Detections in
        original pixels (with ``masks`` (N, H, W) bool for segmentation models)."""
        protos = outputs[1] if isinstance(outputs, (tuple, list)) and len(outputs) == 2 else None
        rows = yolo_nms(outputs, conf, iou, num_classes=self.num_classes or 0, max_det=max_det,
                        agnostic=agnostic, end2end=self.end2end)
        return [Prediction(rows_to_detections(r, m, None if protos is None else protos[i]))
                for i, (r, m) in enumerate(zip(rows, metas))]

    # --- training through ultralytics ---------------------------------------------------------------
    def train_external(self, cfg: UltralyticsConfig, device: torch.device, *, progress: bool = True,
                       trust: bool = False, log: Callable[[str], None] = print) -> tuple[float, list[dict[str, float]]]:
        """Train ``cfg.model.model`` with ultralytics' trainer on ``cfg.data.root`` (COCO or YOLO
        layout); returns (best map50, history rows). ``OUT/best.pt``/``last.pt`` are ultralytics files."""
        out = Path(cfg.out).resolve()
        ensure_dir(out)
        # ultralytics' trainer writes its own way (following links): it gets OUT/ultralytics, a folder
        # made fresh for each run (checked when resumed), and nothing may have escaped it afterwards
        run_dir = out / TRAINER_DIR
        tc = cfg.train
        # The model first: a file that must be refused is refused before any work.
        resume = False
        if tc.resume:
            last = run_dir / "weights" / "last.pt"
            if not last.is_file():
                raise CvappsError(f"train.resume=true but {last} does not exist; train once without resume first")
            if not trusted(trust):  # ultralytics' resume unpickles last.pt in full
                raise refusal(last, "train.resume refused: ultralytics resumes by unpickling the whole file")
            check_tree(run_dir)
            yolo, resume = YOLO(str(last)), True
        else:
            yolo = trainable_model(cfg.model.model, out, trust)
            if cfg.model.weights:
                yolo.load(load_native(cfg.model.weights, trust)[0])  # a module: ultralytics unpickles nothing
        data_yaml = mirror_as_yolo(cfg.data.root, out / "dataset", cfg.data.names)
        args: dict[str, Any] = dict(
            data=str(data_yaml), epochs=tc.epochs, imgsz=cfg.data.imgsz, batch=tc.batch,
            device=ultralytics_device(device), workers=cfg.data.workers, seed=tc.seed,
            optimizer={"adamw": "AdamW", "sgd": "SGD"}[tc.optimizer], lr0=tc.lr, momentum=tc.momentum,
            weight_decay=tc.weight_decay, cos_lr=tc.scheduler == "cosine", amp=tc.amp,
            project=str(out), name=TRAINER_DIR, exist_ok=True, verbose=progress,
            plots=False,  # plots need a font download on first use; offline it would stall
        )
        if cfg.model.freeze:
            args["freeze"] = None if cfg.model.freeze < 0 else cfg.model.freeze
        args.update(cfg.model.trainer_args)
        if resume:
            args = {"resume": True}
        else:
            fresh_dir(run_dir)
        log(f"ultralytics: training {cfg.model.model} on {cfg.data.root} (mirrored as YOLO txt in {data_yaml.parent})")
        try:
            yolo.train(**args)
        except (SyntaxError, TypeError, KeyError) as exc:  # ultralytics' own check of unknown arguments
            raise ConfigError(f"config error: model.trainer_args: {exc}") from None
        save_dir = getattr(getattr(yolo, "trainer", None), "save_dir", run_dir)
        if Path(save_dir).resolve() != run_dir:
            raise CvappsError(f"ultralytics wrote to {save_dir}, not {run_dir}: its outputs are not used")
        check_tree(run_dir)
        history = read_results_csv(run_dir / "results.csv")
        best_metric = max((row.get("val/map50", float("-inf")) for row in history), default=float("nan"))
        for name in ("best.pt", "last.pt"):
            src = run_dir / "weights" / name
            if src.is_file():
                atomic_write(out / name, lambda tmp, s=src: shutil.copyfile(s, tmp))
        log(f"done: best map50 {best_metric:.4f}; ultralytics checkpoints in {out} "
            f"(run them with `cvapps detect SOURCE --model {out / 'best.pt'}`)")
        return best_metric, history


def trainable_model(spec: str, out: Path, trust: bool) -> Any:
    """An ``ultralytics.YOLO`` for training ``spec`` that never unpickles a file: a YAML as is; a
    ``.pt`` is read safely, its architecture written to ``OUT/model.yaml`` and its weights loaded
    as a module."""
    if Path(spec).suffix.lower() in YAML_SUFFIXES:
        return YOLO(spec)
    net, _ = load_native(spec, trust)
    arch = out / "model.yaml"
    atomic_write_text(arch, yaml.safe_dump(dict(net.yaml), sort_keys=False))
    yolo = YOLO(str(arch))
    yolo.load(net)
    return yolo


def rows_to_detections(rows: torch.Tensor, meta: LetterboxMeta, proto: torch.Tensor | None = None) -> Detections:
    """NMS rows ``(N, 6 [+ nm])`` (xyxy network px, score, class [, mask coefficients]) -> Detections
    in original pixels; with ``proto`` (nm, H/4, W/4) also the instance masks."""
    if rows is None or len(rows) == 0:
        empty = Detections.empty()
        masks = None if proto is None else torch.zeros((0, *meta.orig_hw), dtype=torch.bool)
        return Detections(empty.boxes, empty.scores, empty.labels, masks)
    masks = instance_masks(proto, rows[:, 6:], rows[:, :4], meta) if proto is not None else None
    rows = rows.float().cpu()
    return Detections(meta.boxes_to_original(rows[:, :4]), rows[:, 4], rows[:, 5].round().long(), masks)


def instance_masks(proto: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor, meta: LetterboxMeta) -> torch.Tensor:
    """(N, H, W) bool masks in original pixels from prototypes (nm, h, w), coefficients (N, nm) and
    boxes (N, 4) xyxy in network-input pixels: ultralytics' ``process_mask`` (upsampled to the
    input, cropped to each box), then ``scale_masks`` through our letterbox (padding cut, resized to
    the original size) and a 0.5 threshold, as ultralytics' own predictor does."""
    (h, w), (ih, iw) = meta.orig_hw, meta.input_hw
    ratio_pad = ((meta.scale_xy[1], meta.scale_xy[0]), (meta.pad_xy[0], meta.pad_xy[1]))
    out = torch.zeros((len(coeffs), h, w), dtype=torch.bool)
    step = max(1, 16_000_000 // (ih * iw + h * w))  # bounds the float intermediates, as ultralytics does
    proto, coeffs, boxes = proto.float(), coeffs.float(), boxes.float()
    for i in range(0, len(coeffs), step):
        m = ops.process_mask(proto, coeffs[i:i + step], boxes[i:i + step], (ih, iw), upsample=True)  # (n, ih, iw)
        out[i:i + step] = ops.scale_masks(m[None].float(), (h, w), ratio_pad=ratio_pad)[0].gt(0.5).cpu()
    return out


def ultralytics_device(dev: torch.device) -> str:
    """A resolved torch device -> ultralytics' name for it (cpu, mps, "0", "1", ...)."""
    if dev.type == "cuda":
        return str(dev.index or 0)
    return dev.type


def mirror_as_yolo(root: str | os.PathLike, dest: Path, names: list[str] | None = None) -> Path:
    """Write ``dest/{images,labels}/<split>/`` + ``dest/data.yaml`` for ultralytics' trainer.

    Images are symbolic links (copies where links are not allowed) to the user's files; labels are
    YOLO txt (class cx cy w h, normalised) from the checked COCO or YOLO annotations. The user's
    dataset is only read. Returns the data.yaml path.
    """

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root not found: {root}")
    splits = [s for s in available_splits(root) if s in ("train", "val")]
    if "train" not in splits:
        raise DataError(f"{root}: no train split (expected annotations/train.json or labels/train/ + data.yaml)")
    class_names: list[str] | None = names
    fresh_dir(dest)  # ours (inside the run folder): rebuilt, label caches too, so it matches the data now
    for split in splits:
        data = load_detection_split(root, split, class_names=class_names)
        class_names = class_names or data.class_names
        img_dir, lbl_dir = dest / "images" / split, dest / "labels" / split
        used: set[str] = set()
        with open_dir(img_dir) as img_fd:  # the links are made in the folder reached the safe way
            for i, rec in enumerate(data.records):
                stem = rec.path.stem if rec.path.stem not in used else f"{rec.path.stem}_{i}"
                used.add(stem)
                try:
                    os.symlink(rec.path.resolve(), f"{stem}{rec.path.suffix}", dir_fd=img_fd)
                except OSError:
                    copy_file(rec.path, img_dir / f"{stem}{rec.path.suffix}")
                write_yolo_labels(lbl_dir / f"{stem}.txt", rec.boxes, rec.labels.tolist(), rec.width, rec.height)
    val = "val" if "val" in splits else "train"
    if val == "train":
        print(f"note: {root} has no val split; ultralytics validates on the train split", file=sys.stderr)
    return write_data_yaml(dest / "data.yaml", class_names or [], {"train": "images/train", "val": f"images/{val}"},
                           {"path": str(dest.resolve()), SOURCE_KEY: str(root.resolve())})  # SOURCE_KEY: what `cvapps val` evaluates on by default


def read_results_csv(path: Path) -> list[dict[str, float]]:
    """ultralytics' results.csv -> our history rows (``val/map50``, ``val/map`` and the rest as is)."""
    if not path.is_file():
        return []
    rename = {"metrics/mAP50(B)": "val/map50", "metrics/mAP50-95(B)": "val/map",
              "metrics/precision(B)": "val/precision", "metrics/recall(B)": "val/recall"}
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, float] = {}
            for k, v in raw.items():
                try:
                    row[rename.get(k.strip(), k.strip())] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


TASK = TASKS[UltralyticsTask.name]
