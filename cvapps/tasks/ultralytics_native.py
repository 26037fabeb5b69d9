"""Native ultralytics models (yolov8n.pt, yolo11n.pt, *-seg.pt, *.yaml) through cvapps.

Two ways in:

* **Prediction** — :func:`build_predictor` wraps the ultralytics model's ``nn.Module`` so our
  :class:`~cvapps.engine.predict.Predictor`, sources and sinks run it: our letterbox (the same
  grey-114 square letterbox ultralytics uses), ultralytics' NMS, boxes mapped back to original
  pixels, and :class:`~cvapps.structures.Detections` out, exactly as for our own detectors.
  Segmentation models return their boxes only (the mask coefficients are dropped).
* **Training** — ``task: ultralytics`` / ``model.arch: ultralytics`` configs train with ultralytics'
  own trainer (:meth:`UltralyticsTask.train_external`, called by ``cvapps train``). The dataset
  (COCO or YOLO layout) is mirrored into ``OUT/dataset`` as YOLO txt labels with symbolic links
  to the images, so ultralytics never writes label caches or converted files into the user's data.

Offline: a weights name that is not on disk is a one-line error naming where to put the file;
``YOLO(...)`` is never called for it (it would try to download). ``.yaml`` model files build a
randomly initialised model with no network.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import yaml
from pydantic import Field
from torch import nn

from cvapps.config import ModelConfig, TaskConfig
from cvapps.data.letterbox import LetterboxMeta
from cvapps.errors import CheckpointError, ConfigError, CvappsError, DataError
from cvapps.structures import Detections
from cvapps.tasks.base import Task

# Names ultralytics publishes (and would download): yolov8n.pt, yolo11s-seg.pt, yolo26n.pt, rtdetr-l.pt ...
_PUBLISHED = re.compile(r"^(yolo|rtdetr)[\w.-]*\.pt$", re.IGNORECASE)
_YAML = (".yaml", ".yml")


# --- config ---------------------------------------------------------------------------------------
class UltralyticsModelConfig(ModelConfig):
    arch: Literal["ultralytics"] = "ultralytics"
    model: str = Field("yolov8n.yaml", description="ultralytics model: a .yaml (random init) or a local .pt file")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="extra keyword arguments passed verbatim to ultralytics' YOLO.train (e.g. mosaic, close_mosaic)")


class UltralyticsConfig(TaskConfig):
    task: Literal["ultralytics"] = "ultralytics"
    model: UltralyticsModelConfig = Field(default_factory=UltralyticsModelConfig)


# --- loading an ultralytics model -------------------------------------------------------------------
def _weights_dir() -> Path | None:
    try:
        from ultralytics.utils import SETTINGS

        return Path(SETTINGS["weights_dir"])
    except Exception:  # settings unreadable: only the given path counts
        return None


def _mentions_ultralytics(path: Path) -> bool:
    """True for a torch zip file whose pickle references ultralytics classes (read as bytes, never unpickled)."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            return name is not None and b"ultralytics" in zf.read(name)
    except (OSError, zipfile.BadZipFile):
        return False


def is_native_model(spec: str | os.PathLike) -> bool:
    """Whether ``--model spec`` names an ultralytics model rather than a cvapps checkpoint.

    .yaml/.yml: always; an existing .pt: when its pickle references ultralytics; a missing .pt:
    when it has a published ultralytics name (so the user gets the "place the file" message).
    """
    p = Path(str(spec))
    suffix = p.suffix.lower()
    if suffix in _YAML:
        return True
    if suffix != ".pt":
        return False
    if p.is_file():
        return _mentions_ultralytics(p)
    wd = _weights_dir()
    if wd is not None and (wd / p.name).is_file():
        return _mentions_ultralytics(wd / p.name)
    return bool(_PUBLISHED.match(p.name))


def resolve_weights(spec: str | os.PathLike) -> str:
    """The local file (or built-in .yaml name) to hand to ``YOLO()``; raises before any download."""
    p = Path(str(spec))
    if p.suffix.lower() in _YAML:
        return str(p)  # a file, or a built-in ultralytics config name such as yolov8n.yaml
    if p.is_file():
        return str(p)
    wd = _weights_dir()
    if wd is not None and (wd / p.name).is_file():
        return str(wd / p.name)
    where = f"{p.resolve()}" + (f" (or {wd / p.name})" if wd is not None and p.parent == Path(".") else "")
    raise CheckpointError(
        f"ultralytics weights {spec} not found and cvapps does not download: place the file at {where}, "
        f"e.g. from https://github.com/ultralytics/assets/releases, or use a .yaml model for random weights")


def load_ultralytics(spec: str | os.PathLike):
    """``ultralytics.YOLO`` for ``spec`` after the offline checks (see :func:`resolve_weights`)."""
    path = resolve_weights(spec)
    from ultralytics import YOLO

    try:
        # SECURITY: for a .pt, ultralytics unpickles the whole file (torch.load weights_only=False):
        # that runs code stored in it, so this trusts the file as much as running a script from
        # its author. cvapps' own checkpoints never need this (they load with weights_only=True).
        return YOLO(path)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{spec}: cannot load as an ultralytics model ({first})") from None


class NativeDetector(nn.Module):
    """An ultralytics DetectionModel/SegmentationModel behind the cvapps model signature.

    forward(images (B, 3, H, W) float in [0, 1] RGB) -> raw head output: ``(B, 4 + nc [+ 32 mask
    coefficients], A)`` with xywh in network pixels, or ``(B, max_det, 6)`` (xyxy, score, class)
    for end-to-end heads. ultralytics models normalise by /255 only, as our loader delivers.
    """

    def __init__(self, net: nn.Module, num_classes: int, end2end: bool = False) -> None:
        super().__init__()
        self.net, self.num_classes, self.end2end = net, num_classes, end2end

    def forward(self, images: torch.Tensor, targets: Any = None) -> torch.Tensor:
        if self.training and targets is not None:
            raise CvappsError("native ultralytics models train with their own trainer: use a config with task: ultralytics")
        out = self.net(images)
        while isinstance(out, (tuple, list)):  # (y, raw) for detect, ((y, proto), raw) for segment
            out = out[0]
        return out


def native_detector(spec: str | os.PathLike, fuse: bool = True) -> tuple[NativeDetector, list[str], int]:
    """(model in eval mode, class names, the model's training image size) for an ultralytics model."""
    yolo = load_ultralytics(spec)
    if yolo.task not in ("detect", "segment"):
        raise CvappsError(f"{spec} is an ultralytics {yolo.task!r} model; cvapps detect runs detect and segment models")
    net = yolo.model
    if fuse and hasattr(net, "fuse"):
        net = net.fuse(verbose=False)  # conv+BN folding, as ultralytics' own predictor does
    net.eval()
    names_map = net.names if isinstance(net.names, dict) else dict(enumerate(net.names))
    names = [str(names_map[i]) for i in sorted(names_map)]
    head = net.model[-1]
    args = net.args if isinstance(getattr(net, "args", None), dict) else {}
    imgsz = args.get("imgsz", 640)
    imgsz = int(imgsz if isinstance(imgsz, int) else max(imgsz))
    return NativeDetector(net, len(names), bool(getattr(head, "end2end", False))), names, imgsz


def coco_category_ids(names: list[str]) -> list[int] | None:
    """COCO's 91-id scheme for models trained on COCO's 80 classes (so predictions_coco.json
    matches instances_val2017.json); None (index + 1) for anything else."""
    try:
        import ultralytics
        from ultralytics.data.converter import coco80_to_coco91_class

        coco_yaml = Path(ultralytics.__file__).parent / "cfg" / "datasets" / "coco.yaml"
        coco = yaml.safe_load(coco_yaml.read_text(encoding="utf-8"))["names"]
    except Exception:  # layout of the ultralytics package changed: fall back to index + 1
        return None
    if len(names) == 80 and names == [coco[i] for i in range(80)]:
        return list(coco80_to_coco91_class())
    return None


def build_predictor(model_path: str | os.PathLike, device: str = "auto", batch: int = 8,
                    imgsz: int | None = None):
    """A cvapps :class:`~cvapps.engine.predict.Predictor` running an ultralytics model file."""
    from cvapps.engine.predict import Predictor

    model, names, trained_size = native_detector(model_path)
    size = int(imgsz or trained_size)
    if size % 32:
        raise ConfigError(f"--imgsz {size}: ultralytics models need a multiple of 32")
    task = UltralyticsTask(model.num_classes, model.end2end)
    return Predictor(task, model, names, {"imgsz": size, "resize": "letterbox", "in_channels": 3},
                     device=device, batch=batch, category_ids=coco_category_ids(names))


# --- the task -------------------------------------------------------------------------------------
class UltralyticsTask(Task):
    """``task: ultralytics``: predict with native models; train with ultralytics' trainer."""

    name = "ultralytics"
    config_class = UltralyticsConfig
    primary_metric = "map50"
    resize_mode = "letterbox"

    def __init__(self, num_classes: int | None = None, end2end: bool = False) -> None:
        # Set per model by build_predictor: segmentation outputs carry 32 mask coefficients
        # after the class scores, so NMS must know where the classes end.
        self.num_classes, self.end2end = num_classes, end2end

    def build_model(self, cfg: UltralyticsConfig, class_names: list[str]) -> nn.Module:
        model, _, _ = native_detector(cfg.model.model, fuse=False)
        return model

    def postprocess(self, outputs: torch.Tensor, metas: list[LetterboxMeta], conf: float = 0.25,
                    iou: float = 0.7, max_det: int = 300, agnostic: bool = False, **_: Any) -> list[Detections]:
        """Raw head output (see :class:`NativeDetector`) -> one Detections per image, original pixels."""
        from cvapps.heads.yolo import yolo_nms

        rows = yolo_nms(outputs, conf, iou, num_classes=self.num_classes or 0, max_det=max_det,
                        agnostic=agnostic, end2end=self.end2end)
        return [rows_to_detections(r, m) for r, m in zip(rows, metas)]

    # --- training through ultralytics ---------------------------------------------------------------
    def train_external(self, cfg: UltralyticsConfig, *, progress: bool = True,
                       log: Callable[[str], None] = print):
        """Train ``cfg.model.model`` with ultralytics' trainer on ``cfg.data.root`` (COCO or YOLO layout)."""
        from cvapps.engine.train import TrainResult

        out = Path(cfg.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        data_yaml = mirror_as_yolo(cfg.data.root, out / "dataset", cfg.data.names)
        tc = cfg.train
        args: dict[str, Any] = dict(
            data=str(data_yaml), epochs=tc.epochs, imgsz=cfg.data.imgsz, batch=tc.batch,
            device=ultralytics_device(tc.device), workers=cfg.data.workers, seed=tc.seed,
            optimizer={"adamw": "AdamW", "sgd": "SGD"}[tc.optimizer], lr0=tc.lr, momentum=tc.momentum,
            weight_decay=tc.weight_decay, cos_lr=tc.scheduler == "cosine", amp=tc.amp,
            project=str(out.parent), name=out.name, exist_ok=True, verbose=progress,
            plots=False,  # plots need a font download on first use; offline it would stall
        )
        if cfg.model.freeze:
            args["freeze"] = None if cfg.model.freeze < 0 else cfg.model.freeze
        args.update(cfg.model.trainer_args)
        if tc.resume:
            last = out / "weights" / "last.pt"
            if not last.is_file():
                raise CvappsError(f"train.resume=true but {last} does not exist; train once without resume first")
            yolo, args = load_ultralytics(last), {"resume": True}
        else:
            yolo = load_ultralytics(cfg.model.model)
            if cfg.model.weights:
                yolo.load(resolve_weights(cfg.model.weights))
        log(f"ultralytics: training {cfg.model.model} on {cfg.data.root} (mirrored as YOLO txt in {data_yaml.parent})")
        try:
            yolo.train(**args)
        except (SyntaxError, TypeError, KeyError) as exc:  # ultralytics' own check of unknown arguments
            raise ConfigError(f"config error: model.trainer_args: {exc}") from None
        history = read_results_csv(out / "results.csv")
        best_metric = max((row.get("val/map50", float("-inf")) for row in history), default=float("nan"))
        for name in ("best.pt", "last.pt"):
            src = out / "weights" / name
            if src.is_file():
                from cvapps.checkpoint import atomic_write

                atomic_write(out / name, lambda tmp, s=src: shutil.copyfile(s, tmp))
        log(f"done: best map50 {best_metric:.4f}; ultralytics checkpoints in {out} "
            f"(run them with `cvapps detect SOURCE --model {out / 'best.pt'}`)")
        return TrainResult(out, best_metric, history)


def rows_to_detections(rows: torch.Tensor, meta: LetterboxMeta) -> Detections:
    """NMS rows ``(N, 6+)`` (xyxy network px, score, class) -> Detections in original pixels."""
    if rows is None or len(rows) == 0:
        return Detections.empty()
    rows = rows.float().cpu()
    return Detections(meta.boxes_to_original(rows[:, :4]), rows[:, 4], rows[:, 5].round().long())


def ultralytics_device(spec: str) -> str:
    """cvapps device names -> ultralytics' (cpu, mps, "0", "1", ...)."""
    from cvapps.engine.device import resolve_device

    dev = resolve_device(spec)
    if dev.type == "cuda":
        return str(dev.index or 0)
    return dev.type


def mirror_as_yolo(root: str | os.PathLike, dest: Path, names: list[str] | None = None) -> Path:
    """Write ``dest/{images,labels}/<split>/`` + ``dest/data.yaml`` for ultralytics' trainer.

    Images are symbolic links (copies where links are not allowed) to the user's files; labels are
    YOLO txt (class cx cy w h, normalised) from the checked COCO or YOLO annotations. The user's
    dataset is only read. Returns the data.yaml path.
    """
    from cvapps.data.check import available_splits, load_detection_split
    from cvapps.formats.yolo import write_data_yaml, write_yolo_labels

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root not found: {root}")
    splits = [s for s in available_splits(root) if s in ("train", "val")]
    if "train" not in splits:
        raise DataError(f"{root}: no train split (expected annotations/train.json or labels/train/ + data.yaml)")
    class_names: list[str] | None = names
    for split in splits:
        data = load_detection_split(root, split, class_names=class_names)
        class_names = class_names or data.class_names
        img_dir, lbl_dir = dest / "images" / split, dest / "labels" / split
        for d in (img_dir, lbl_dir):
            if d.exists():
                shutil.rmtree(d)  # ours (inside the run folder): rebuilt so it matches the data now
            d.mkdir(parents=True)
        used: set[str] = set()
        for i, rec in enumerate(data.records):
            stem = rec.path.stem if rec.path.stem not in used else f"{rec.path.stem}_{i}"
            used.add(stem)
            link = img_dir / f"{stem}{rec.path.suffix}"
            try:
                link.symlink_to(rec.path.resolve())
            except OSError:
                shutil.copyfile(rec.path, link)
            write_yolo_labels(lbl_dir / f"{stem}.txt", rec.boxes, rec.labels.tolist(), rec.width, rec.height)
    val = "val" if "val" in splits else "train"
    if val == "train":
        print(f"note: {root} has no val split; ultralytics validates on the train split", file=sys.stderr)
    return write_data_yaml(dest / "data.yaml", class_names or [], {"train": "images/train", "val": f"images/{val}"},
                           {"path": str(dest.resolve())})


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


TASK = UltralyticsTask()
