"""YOLO txt layout: ``ROOT/labels/<split>/<stem>.txt`` lines ``class cx cy w h`` (normalised to the
image size) next to ``ROOT/images/<split>/``, and ``ROOT/data.yaml`` with the class ``names``.
Segmentation labels (ultralytics' ``class x1 y1 x2 y2 x3 y3 ...``, normalised polygon points) are read
as the polygon's box plus the polygon (the ground truth's COCO ``segmentation``); with ``kpt_shape``
in data.yaml (pose labels) only the leading ``class cx cy w h`` of a line is read.

Read: :func:`read_yolo_names`, :func:`read_data_yaml`, :func:`load_yolo_split` (with the check rules,
into a :class:`~cvapps.formats.report.DetectionSplit`). Write: :func:`write_yolo_labels` (one
label file from xyxy pixel boxes, and polygons where there are any) and :func:`write_data_yaml`. Every YOLO file cvapps writes (``data
convert``, the ultralytics dataset mirror) goes through these two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pycocotools import mask as mask_utils

from cvapps.checkpoint import atomic_write_text
from cvapps.errors import DataError, ImageReadError
from cvapps.formats.coco_encode import compressed_rle
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


def yolo_polygon_lines(boxes: np.ndarray | Sequence[Sequence[float]], labels: Sequence[int],
                       polygons: Sequence[Sequence[Sequence[float]]], width: float, height: float) -> list[str]:
    """Segmentation lines ``class x1 y1 x2 y2 ...`` (6 decimals) of objects with boxes (N, 4) xyxy and
    polygons (per object a list of flat pixel polygons, possibly empty). ultralytics reads a file as all
    boxes or all polygons, so an object without a polygon is written as its box's 4 corners, and one of
    several polygons as their points in a row (its box stays exact)."""
    w, h = float(width), float(height)
    lines = []
    for b, c, polys in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4).tolist(), list(labels), polygons):
        points = [v for p in polys for v in p] or [b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]
        lines.append(f"{int(c)} " + " ".join(f"{v / (w if i % 2 == 0 else h):.6f}" for i, v in enumerate(points)))
    return lines


def yolo_label_text(boxes: Any, labels: Sequence[int], width: float, height: float,
                    polygons: Sequence[Sequence[Sequence[float]]] | None = None) -> str:
    """The text of one label file: box lines, or segmentation lines when ``polygons`` (per object,
    see :func:`yolo_polygon_lines`) hold any polygon."""
    if polygons is not None and any(polygons):
        lines = yolo_polygon_lines(boxes, labels, polygons, width, height)
    else:
        lines = yolo_lines(boxes, labels, width, height)
    return "".join(line + "\n" for line in lines)


def write_yolo_labels(path: str | Path, boxes: Any, labels: Sequence[int], width: float, height: float,
                      polygons: Sequence[Sequence[Sequence[float]]] | None = None) -> None:
    """One label file (atomically, :func:`yolo_label_text`); an image without objects gets an empty file."""
    atomic_write_text(path, yolo_label_text(boxes, labels, width, height, polygons))


def write_data_yaml(path: str | Path, names: Sequence[str], splits: dict[str, str],
                    extra: dict[str, Any] | None = None) -> Path:
    """``data.yaml``: ``extra`` keys (``path``, ``category_ids``), ``splits`` (e.g.
    ``{"train": "images/train"}``), then ``names`` as ``{index: name}``."""
    atomic_write_text(path, data_yaml_text(names, splits, extra))
    return Path(path)


def data_yaml_text(names: Sequence[str], splits: dict[str, str], extra: dict[str, Any] | None = None) -> str:
    """The text :func:`write_data_yaml` writes."""
    return yaml.safe_dump({**(extra or {}), **splits, "names": dict(enumerate(names))}, sort_keys=False)


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


def _parse_line(parts: list[str], w: int, h: int, box_only: bool) -> tuple[int, list[float], list[float] | None]:
    """``class cx cy w h`` or ``class x1 y1 x2 y2 x3 y3 ...`` (normalised) -> (class, xyxy pixels,
    polygon pixels or None); ValueError when the line is neither."""
    cls, values = int(parts[0]), [float(v) for v in parts[1:]]
    if not all(math.isfinite(v) for v in values):
        raise ValueError("not finite")
    if len(values) == 4 or (box_only and len(values) > 4):
        cx, cy, bw, bh = values[:4]
        return cls, [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], None
    if len(values) < 6 or len(values) % 2:
        raise ValueError("neither a box nor a polygon")
    poly = [v * (w if i % 2 == 0 else h) for i, v in enumerate(values)]
    return cls, [min(poly[0::2]), min(poly[1::2]), max(poly[0::2]), max(poly[1::2])], poly


def load_yolo_split(root: str | Path, split: str, *, read_images: bool = False,
                    class_names: list[str] | None = None) -> DetectionSplit:
    """Read and check ``ROOT/images/<split>/*`` with ``ROOT/labels/<split>/<stem>.txt`` lines
    ``class cx cy w h`` or polygons ``class x1 y1 x2 y2 ...`` (normalised); images without a label
    file have no objects.

    Image ids are 1..N in sorted file-name order (the YOLO layout has no ids of its own)."""
    root = Path(root)
    names = read_yolo_names(root)
    box_only = "kpt_shape" in read_data_yaml(root)  # pose labels: box then keypoints, not a polygon
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
        boxes, labels, segments = [], [], []
        label_file = label_dir / f"{stem}.txt"
        lines = label_file.read_text(encoding="utf-8", errors="replace").splitlines() if label_file.is_file() else []
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{label_file.relative_to(root)}:{n}"
            try:
                cls, xyxy, poly = _parse_line(parts, w, h, box_only)
            except ValueError:
                report.add("malformed_entries", f"{where}: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', "
                                                f"got {line.strip()!r:.80}")
                continue
            if not 0 <= cls < len(names):
                report.add("unknown_categories", f"{where}: class {cls} has no name in data.yaml")
                continue
            box = clean_box(xyxy, w, h, report, where)
            if box is None:
                continue
            boxes.append(box)
            labels.append(cls)
            ann = {"id": len(gt_anns) + 1, "image_id": image_id, "category_id": cls + 1,
                   "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                   "area": (box[2] - box[0]) * (box[3] - box[1]), "iscrowd": 0}
            if poly is not None:
                ann["segmentation"] = [[round(v, 3) for v in poly]]
                ann["area"] = float(mask_utils.area(compressed_rle(ann["segmentation"], h, w))) or ann["area"]
                segments.append((cls + 1, ann["segmentation"], 0))
            gt_anns.append(ann)
        records.append(make_record({"id": image_id, "file_name": rel.as_posix(), "path": path, "width": w, "height": h,
                                    "boxes": boxes, "labels": labels, "segments": segments}))
        gt_images.append({"id": image_id, "file_name": rel.as_posix(), "width": w, "height": h})
    report.counts["images"] = len(records)
    report.counts["boxes"] = sum(len(r.boxes) for r in records)
    category_ids = list(range(1, len(names) + 1))
    gt = {"images": gt_images, "annotations": gt_anns,
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    return DetectionSplit(root, split, "yolo", records, names, category_ids, report, gt)


