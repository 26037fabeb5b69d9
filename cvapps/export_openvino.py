"""``cvapps export CKPT --format openvino [--int8 --data DIR]``: a checkpoint -> an OpenVINO model folder.

The folder (``model.xml/.bin`` + ``metadata.json``: :mod:`cvapps.engine.openvino_model`) is converted
from the same ONNX graph ``--format onnx`` writes, carries the same metadata and is a model everywhere a
model is taken (``--model``, ``cvapps.load``, ``cvapps val``). fp32 is checked against PyTorch (the
task's export tolerance) before anything is written.

``--int8``: post-training quantization with NNCF on a calibration set of up to ``--calib`` images
(default 300) from DIR (its ``images/train`` or ``train`` folder when there is one, else every image
under DIR; mask and label folders are skipped), preprocessed exactly as prediction does. The metric
of the fp32 checkpoint and of the INT8 folder on the val split of the model's dataset (DIR when it is
one, else the checkpoint's ``data.root``) is printed, so the user sees what INT8 cost.

Faster R-CNN is refused with the ONNX export's reason (OpenVINO converts that same graph).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvapps.engine.evaluate import evaluate_checkpoint
from cvapps.engine.load import LoadedModel, load_model
from cvapps.engine.onnx_graph import GraphSpec
from cvapps.engine.openvino_model import (
    OPENVINO_FORMAT,
    check_converted,
    convert_model,
    is_openvino_folder,
    need_openvino,
    save_folder,
)
from cvapps.engine.runtime import file_sha256
from cvapps.errors import CvappsError, ImageReadError
from cvapps.io.images import IMAGE_EXTENSIONS, read_image

SKIP_FOLDERS = {"masks", "labels", "annotations"}  # not photos: never calibration data


@dataclass(frozen=True)
class OpenVinoExportOptions:
    """int8: quantize with NNCF; data: calibration images / dataset root (None: the config's data.root);
    calib: calibration images at most; check: compare fp32 with PyTorch; metrics: print fp32 vs INT8."""

    int8: bool = False
    data: str | None = None
    calib: int = 300
    check: bool = True
    metrics: bool = True


@dataclass
class OpenVinoReport:
    folder: Path
    task: str
    precision: str
    max_abs_diff: float | None = None
    calibration_images: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # "fp32"/"int8" -> metrics
    primary: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"exported {self.task} model to {self.folder} (OpenVINO {self.precision}, dynamic batch) in "
                 f"{self.seconds:.1f} s"]
        if self.max_abs_diff is not None:
            lines.append(f"OpenVINO fp32 matches PyTorch: max |diff| {self.max_abs_diff:.2e}")
        if self.calibration_images:
            lines.append(f"INT8 calibrated on {self.calibration_images} images")
        keys = [self.primary] + (["map"] if self.primary == "map50" else [])  # detectors: mAP50 and mAP50-95
        for key in keys if self.metrics else []:
            shown = ", ".join(f"{name} {_value(m.get(key))}" for name, m in self.metrics.items())
            lines.append(f"{key} on the val split: {shown}")
        return "\n".join([*lines, *(f"note: {n}" for n in self.notes)])


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def default_folder(checkpoint: Path, int8: bool) -> Path:
    """``best.pt`` -> ``best_openvino/`` (``best_int8_openvino/`` with --int8), next to it."""
    return checkpoint.with_name(f"{checkpoint.stem}{'_int8' if int8 else ''}_openvino")


def export_openvino(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                    options: OpenVinoExportOptions = OpenVinoExportOptions()) -> OpenVinoReport:
    """Export ``checkpoint`` (a cvapps ``.pt``) to an OpenVINO folder at ``out``; see the module docstring."""
    t0 = time.perf_counter()
    need_openvino()
    checkpoint = Path(checkpoint)
    if options.int8:
        need_nncf()
    if options.calib < 1:
        raise CvappsError(f"export: --calib must be >= 1, got {options.calib}")
    loaded = load_model(checkpoint)
    if loaded.runtime != "torch" or checkpoint.is_dir():
        raise CvappsError(f"export: {checkpoint} is already an exported model; export the .pt checkpoint")
    task = loaded.task
    if task.onnx is None:
        raise CvappsError(task.onnx_refusal or f"export: {task.describe()} does not export")
    folder = Path(out) if out else default_folder(checkpoint, options.int8)
    _check_out_folder(folder)
    info = {**loaded.info, "preprocessing": loaded.preprocessing, "config": loaded.raw_config,
            "class_names": loaded.class_names, "category_ids": loaded.category_ids}
    ov_model, meta = convert_model(loaded.model, task, info, checkpoint.name)
    spec = GraphSpec(int(meta["preprocessing"]["imgsz"]), int(meta["preprocessing"]["in_channels"]))
    report = OpenVinoReport(folder, task.name, "int8" if options.int8 else "fp32", primary=task.primary_metric)
    if options.check:
        report.max_abs_diff = check_converted(ov_model, loaded.model, task, spec)
    if options.int8:
        arrays = calibration_arrays(loaded, options)
        ov_model = quantize(ov_model, arrays)
        report.calibration_images = len(arrays)
        meta.update(precision="int8", calibration_images=len(arrays))
    meta["source_sha256"] = file_sha256(checkpoint)
    save_folder(ov_model, meta, folder)
    if options.int8 and options.metrics:
        report.metrics, note = compare_metrics(checkpoint, folder, options.data)
        report.notes += [note] if note else []
    report.seconds = time.perf_counter() - t0
    return report


def need_nncf() -> Any:
    try:
        import nncf  # optional heavy dependency: only INT8 export needs it
    except ImportError:
        raise CvappsError('INT8 export needs NNCF, part of the openvino extra: '
                          'pip install "cvapps[openvino]"') from None
    return nncf


def calibration_files(data: Path, limit: int) -> list[Path]:
    """Up to ``limit`` images under ``data`` (its train folder first), spread evenly over the sorted list."""
    for sub in (data / "images" / "train", data / "train"):
        if sub.is_dir():
            data = sub
            break
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not SKIP_FOLDERS & {part.lower() for part in p.relative_to(data).parts[:-1]})
    if len(files) > limit:  # every k-th, so all classes / sequences are represented
        files = [files[int(i * len(files) / limit)] for i in range(limit)]
    return files


def calibration_arrays(loaded: LoadedModel, options: OpenVinoExportOptions) -> list[np.ndarray]:
    """The calibration set: ``(1, C, S, S)`` float32 arrays in [0, 1], preprocessed as prediction does."""
    root = options.data or (loaded.raw_config or {}).get("data", {}).get("root")
    if not root or not Path(root).is_dir():
        raise CvappsError(f"export: --int8 needs calibration images: --data DIR (not a folder: {root})"
                          if root else "export: --int8 needs calibration images: --data DIR")
    pre = loaded.preprocessing
    size, channels = int(pre["imgsz"]), int(pre.get("in_channels", 3))
    arrays = []
    for path in calibration_files(Path(root), options.calib):
        try:
            image = read_image(path)
        except ImageReadError:
            continue  # an unreadable file is no calibration data; the others are enough
        array, _ = loaded.task.preprocess(image, size, channels, rect=False)
        arrays.append(np.ascontiguousarray(array.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0)
    if not arrays:
        raise CvappsError(f"export: no readable images under {root} to calibrate INT8 with")
    return arrays


def quantize(ov_model: Any, arrays: list[np.ndarray]) -> Any:
    """NNCF post-training INT8 quantization of an OpenVINO model on ``arrays`` (its input batches)."""
    nncf = need_nncf()
    try:
        return nncf.quantize(ov_model, nncf.Dataset(arrays), subset_size=len(arrays),
                             preset=nncf.QuantizationPreset.MIXED)
    except Exception as exc:  # noqa: BLE001 - NNCF's errors are many and long
        text = " ".join(str(exc).split())[:200]
        raise CvappsError(f"export: INT8 quantization failed: {text or type(exc).__name__}") from None


def compare_metrics(checkpoint: Path, folder: Path, data: str | None) -> tuple[dict[str, dict[str, float]], str]:
    """Metrics of the fp32 checkpoint and the INT8 folder on the val split (DIR when it is a dataset,
    else the checkpoint's own); ``({}, reason)`` when there is no val split to score."""
    overrides = [f"data.root={data}"] if data else []
    try:
        fp32 = evaluate_checkpoint(checkpoint, overrides)
    except CvappsError as exc:
        if not overrides:
            return {}, f"no fp32 vs INT8 metric: {exc}"
        try:  # DIR holds only calibration images: the checkpoint's own dataset then
            overrides, fp32 = [], evaluate_checkpoint(checkpoint, [])
        except CvappsError:
            return {}, f"no fp32 vs INT8 metric: {exc}"
    return {"fp32": fp32, "int8": evaluate_checkpoint(folder, overrides)}, ""


def _check_out_folder(folder: Path) -> None:
    """Write only into a new folder, an empty one or an earlier OpenVINO export (never over other files)."""
    if folder.exists() and not folder.is_dir():
        raise CvappsError(f"export: --out {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not is_openvino_folder(folder):
        raise CvappsError(f"export: --out {folder} is a folder with other files in it; give a new or empty folder "
                          f"(or an earlier {OPENVINO_FORMAT} export to replace)")
