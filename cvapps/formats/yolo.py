"""YOLO txt layout: ``ROOT/labels/<split>/<stem>.txt`` lines ``class cx cy w h`` (normalised to the
image size) next to ``ROOT/images/<split>/``, and ``ROOT/data.yaml`` with the class ``names``.

Read: :func:`read_yolo_names`, :func:`read_data_yaml`, :func:`load_yolo_split` (with the check rules,
into a :class:`~cvapps.formats.report.DetectionSplit`). Write: :func:`write_yolo_labels` (one
label file from xyxy pixel boxes) and :func:`write_data_yaml`. Every YOLO file cvapps writes (``data
convert``, the ultralytics dataset mirror) goes through these two.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from cvapps.checkpoint import atomic_write_text
from cvapps.errors import DataError, ImageReadError
from cvapps.formats.report import (
    CheckReport,
    DetectionSplit,
    clean_box,
    inside,
    make_record,
    read_check,
)
from cvapps.io.images import IMAGE_EXTENSIONS, image_size


def yolo_lines(boxes: np.ndarray | Sequence[Sequence[float]], labels: Sequence[int], width: float,
               height: float) -> list[str]:
    """Boxes (N, 4) xyxy in pixels of a ``width`` x ``height`` image -> ``class cx cy w h`` lines (6 decimals)."""
    w, h = float(width), float(height)
    return [f"{int(c)} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} {(b[2] - b[0]) / w:.6f} "
            f"{(b[3] - b[1]) / h:.6f}" for b, c in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4).tolist(),
                                                        list(labels))]


def write_yolo_labels(path: str | Path, boxes: Any, labels: Sequence[int], width: float, height: float) -> None:
    """One label file (atomically); an image without objects gets an empty file."""
    lines = yolo_lines(boxes, labels, width, height)
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_data_yaml(path: str | Path, names: Sequence[str], splits: dict[str, str],
                    extra: dict[str, Any] | None = None) -> Path:
    """``data.yaml``: ``extra`` keys (``path``, ``category_ids``), ``splits`` (e.g.
    ``{"train": "images/train"}``), then ``names`` as ``{index: name}``."""
    data = {**(extra or {}), **splits, "names": dict(enumerate(names))}
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return Path(path)


def read_data_yaml(root: Path) -> dict[str, Any]:
    """``ROOT/data.yaml`` as a dict (a one-line DataError when missing or not a YAML mapping)."""
    path = root / "data.yaml"
    if not path.is_file():
        raise DataError(f"{path} not found (the YOLO layout keeps its class names there)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        raise DataError(f"{path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: needs 'names', a list of class names or a mapping 0: name, 1: name, ...")
    return data


def read_yolo_names(root: Path) -> list[str]:
    """Class names from ``ROOT/data.yaml`` (``names`` as a list or an {index: name} mapping)."""
    path = root / "data.yaml"
    names = read_data_yaml(root).get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            keys = []
        if keys != list(range(len(names))):
            raise DataError(f"{path}: names must map 0..N-1 to class names")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise DataError(f"{path}: needs 'names', a list of class names or a mapping 0: name, 1: name, ...")
    return [str(n) for n in names]


def load_yolo_split(root: str | Path, split: str, *, read_images: bool = False,
                    class_names: list[str] | None = None) -> DetectionSplit:
    """Read and check ``ROOT/images/<split>/*`` with ``ROOT/labels/<split>/<stem>.txt`` lines
    ``class cx cy w h`` (normalised); images without a label file have no objects.

    Image ids are 1..N in sorted file-name order (the YOLO layout has no ids of its own)."""
    root = Path(root)
    names = read_yolo_names(root)
    if class_names and list(class_names) != names:
        raise DataError(f"{root / 'data.yaml'}: names {names} differ from data.names {list(class_names)}")
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    if not image_dir.is_dir():
        raise DataError(f"image folder not found: {image_dir}")
    report = CheckReport(split)
    files = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    records, gt_images, gt_anns, stems = [], [], [], {}
    for path in files:
        rel = path.relative_to(image_dir)
        stem = rel.with_suffix("").as_posix()
        if stem in stems:
            report.add("duplicate_image_ids", f"{rel} and {stems[stem]} share the label file {stem}.txt; {rel} dropped")
            continue
        stems[stem] = rel
        if not inside(path, root):
            report.add("escaping_paths", f"{path} links outside {root}")
            continue
        try:
            w, h = image_size(path)
        except ImageReadError as exc:
            report.add("unreadable_images", f"{path}: {exc.reason}")
            continue
        if read_images and not read_check(path, w, h, report):
            continue
        image_id = len(records) + 1
        boxes, labels = [], []
        label_file = label_dir / f"{stem}.txt"
        lines = label_file.read_text(encoding="utf-8", errors="replace").splitlines() if label_file.is_file() else []
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{label_file.relative_to(root)}:{n}"
            try:
                cls, cx, cy, bw, bh = int(parts[0]), *(float(v) for v in parts[1:5])
                if len(parts) != 5 or not all(math.isfinite(v) for v in (cx, cy, bw, bh)):
                    raise ValueError
            except ValueError:
                report.add("malformed_entries", f"{where}: expected 'class cx cy w h', got {line.strip()!r}")
                continue
            if not 0 <= cls < len(names):
                report.add("unknown_categories", f"{where}: class {cls} has no name in data.yaml")
                continue
            box = clean_box([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], w, h,
                            report, where)
            if box is None:
                continue
            boxes.append(box)
            labels.append(cls)
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "category_id": cls + 1,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                            "area": (box[2] - box[0]) * (box[3] - box[1]), "iscrowd": 0})
        records.append(make_record({"id": image_id, "file_name": rel.as_posix(), "path": path, "width": w, "height": h,
                                "boxes": boxes, "labels": labels}))
        gt_images.append({"id": image_id, "file_name": rel.as_posix(), "width": w, "height": h})
    report.counts["images"] = len(records)
    report.counts["boxes"] = sum(len(r.boxes) for r in records)
    category_ids = list(range(1, len(names) + 1))
    gt = {"images": gt_images, "annotations": gt_anns,
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    return DetectionSplit(root, split, "yolo", records, names, category_ids, report, gt)


