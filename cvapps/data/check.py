"""Detection dataset checking: the ``cvapps data check`` rules, also applied by every loader.

Both layouts are read into one clean form (:class:`DetectionSplit`): per image its path, size and
boxes (xyxy, original pixels, 0-based class indices), plus a :class:`CheckReport` of what was wrong
and what was done about it. The rules:

==========================  ===================================================================
missing image file          image dropped (with its boxes)
unreadable image file       reported by ``data check`` (it decodes every image); loaders skip the
                            file when they meet it
file_name escaping ROOT     image rejected (absolute paths, ``..`` out of ROOT)
box outside the image       clamped to the image
zero-area box               dropped (also after clamping)
unknown category id         box dropped (YOLO: class index without a name)
annotation of unknown image box dropped
duplicate image id          later image entry dropped (its boxes would be ambiguous)
duplicate annotation id     kept under a fresh id
malformed entry             entry dropped (e.g. a bbox that is not 4 numbers)
==========================  ===================================================================

A JSON file that is not a COCO dataset at all (not an object, missing ``images``/``annotations``/
``categories``, or one of them not a list) is a one-line :class:`~cvapps.errors.DataError`.

Class index ``i`` <-> COCO category id ``category_ids[i]`` (the dataset's ids, sorted) and name
``class_names[i]``; YOLO datasets get category ids ``i + 1``.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cvapps.errors import DataError, ImageReadError
from cvapps.io.images import IMAGE_EXTENSIONS, image_size

# Problem kinds in report order, with the words used in summaries.
PROBLEM_KINDS: dict[str, str] = {
    "missing_images": "missing image files",
    "unreadable_images": "unreadable image files",
    "escaping_paths": "file_name paths escaping ROOT (rejected)",
    "clamped_boxes": "boxes outside the image (clamped)",
    "zero_area_boxes": "zero-area boxes (dropped)",
    "unknown_categories": "boxes with unknown category ids (dropped)",
    "unknown_image_ids": "annotations of unknown image ids (dropped)",
    "duplicate_image_ids": "duplicate image ids (later entry dropped)",
    "duplicate_annotation_ids": "duplicate annotation ids (renumbered)",
    "duplicate_category_ids": "duplicate category ids (later entry ignored)",
    "malformed_entries": "malformed entries (dropped)",
    "size_mismatch": "images whose size differs from the annotation file",
}


@dataclass
class CheckReport:
    """What a check found in one split: ``counts`` (images, boxes and each problem kind) and one
    human-readable line per problem in ``problems``."""

    name: str
    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, kind: str, message: str) -> None:
        assert kind in PROBLEM_KINDS, kind
        self.counts[kind] += 1
        self.problems.append(f"{kind}: {message}")

    @property
    def problem_counts(self) -> dict[str, int]:
        return {k: self.counts[k] for k in PROBLEM_KINDS if self.counts[k]}

    @property
    def ok(self) -> bool:
        return not self.problem_counts

    def summary(self) -> str:
        """One line: ``train: 120 images, 310 boxes; 2 missing image files, ...``."""
        head = f"{self.name}: {self.counts['images']} images, {self.counts['boxes']} boxes"
        probs = self.problem_counts
        if not probs:
            return head + "; no problems"
        return head + "; " + ", ".join(f"{n} {PROBLEM_KINDS[k]}" for k, n in probs.items())

    def text(self, max_lines: int = 50) -> str:
        """The summary and the first ``max_lines`` problem lines."""
        lines = [self.summary()] + [f"  {p}" for p in self.problems[:max_lines]]
        if len(self.problems) > max_lines:
            lines.append(f"  ... and {len(self.problems) - max_lines} more")
        return "\n".join(lines)


@dataclass
class ImageRecord:
    """One image of a split. boxes: float32 (N, 4) xyxy in original pixels (clamped, non-crowd);
    labels: int64 (N,) 0-based class indices."""

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray


@dataclass
class DetectionSplit:
    """One checked split: its images, class mapping, report, and a clean COCO ground truth."""

    root: Path
    split: str
    layout: str                    # "coco" or "yolo"
    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]
    report: CheckReport
    gt: dict[str, Any]             # COCO dataset dict of the kept images/annotations (for COCOeval)


# ---------------------------------------------------------------------------------------------
# helpers

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def clean_box(xyxy: list[float], width: int, height: int, report: CheckReport, where: str) -> list[float] | None:
    """Clamp a box to the image (reported) and drop it when its area is zero (reported)."""
    x1, y1, x2, y2 = xyxy
    c = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
        report.add("zero_area_boxes", f"{where}: box {[round(v, 2) for v in xyxy]} has no area inside the "
                                      f"{width}x{height} image")
        return None
    if c != [float(v) for v in xyxy]:
        report.add("clamped_boxes", f"{where}: box {[round(v, 2) for v in xyxy]} clamped to the {width}x{height} image")
    return c


def _read_check(path: Path, width: int, height: int, report: CheckReport) -> bool:
    """Decode the image (data check only): unreadable -> reported, False; size mismatch -> reported."""
    from cvapps.io.images import read_image

    try:
        img = read_image(path)
    except ImageReadError as exc:
        report.add("unreadable_images", f"{path}: {exc.reason}")
        return False
    if img.shape[:2] != (height, width):
        report.add("size_mismatch", f"{path}: image is {img.shape[1]}x{img.shape[0]}, annotations say {width}x{height}")
    return True


# ---------------------------------------------------------------------------------------------
# COCO layout

def read_coco_json(path: Path) -> dict[str, Any]:
    """Parse a COCO dataset file; anything that is not one is a one-line DataError."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file must be a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: missing the {key!r} list of a COCO dataset file")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


def load_coco_split(root: str | Path, split: str, *, read_images: bool = False,
                    class_names: list[str] | None = None) -> DetectionSplit:
    """Read and check ``ROOT/annotations/<split>.json`` with images in ``ROOT/images/<split>/``.

    read_images: decode every image (``data check``); otherwise only existence is checked and
    unreadable files are skipped later by the dataset.
    class_names: if given, must equal the dataset's category names (in sorted-id order).
    """
    root = Path(root)
    ann_path = root / "annotations" / f"{split}.json"
    data = read_coco_json(ann_path)
    image_dir = root / "images" / split
    report = CheckReport(split)

    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_id(c.get("id")) or not isinstance(c.get("name"), str):
            report.add("malformed_entries", f"categories[{i}]: needs an integer id and a name")
            continue
        if c["id"] in cats:
            report.add("duplicate_category_ids", f"categories[{i}]: id {c['id']} already used by {cats[c['id']]!r}")
            continue
        cats[c["id"]] = c["name"]
    if not cats:
        raise DataError(f"{ann_path}: no usable categories")
    category_ids = sorted(cats)
    names = [cats[i] for i in category_ids]
    if class_names and list(class_names) != names:
        raise DataError(f"{ann_path}: categories {names} differ from data.names {list(class_names)}")
    index_of = {cid: i for i, cid in enumerate(category_ids)}

    images: dict[int, dict[str, Any]] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not _is_id(im.get("id")) or not isinstance(im.get("file_name"), str) \
                or not im["file_name"]:
            report.add("malformed_entries", f"images[{i}]: needs an integer id and a file_name")
            continue
        if im["id"] in images:
            report.add("duplicate_image_ids", f"images[{i}]: id {im['id']} already used by "
                                              f"{images[im['id']]['file_name']!r}; {im['file_name']!r} dropped")
            continue
        fname = im["file_name"]
        path = image_dir / fname
        if Path(fname).is_absolute() or not _inside(path, root):
            report.add("escaping_paths", f"images[{i}]: file_name {fname!r} points outside {root}")
            images[im["id"]] = {"drop": True, "file_name": fname}
            continue
        if not path.is_file():
            report.add("missing_images", f"image id {im['id']}: {path} does not exist")
            images[im["id"]] = {"drop": True, "file_name": fname}
            continue
        w, h = im.get("width"), im.get("height")
        if not (_is_id(w) and _is_id(h) and w > 0 and h > 0):
            try:
                w, h = image_size(path)
            except ImageReadError as exc:
                report.add("unreadable_images", f"{path}: {exc.reason}")
                images[im["id"]] = {"drop": True, "file_name": fname}
                continue
        if read_images and not _read_check(path, w, h, report):
            images[im["id"]] = {"drop": True, "file_name": fname}
            continue
        images[im["id"]] = {"id": im["id"], "file_name": fname, "path": path, "width": w, "height": h,
                            "boxes": [], "labels": [], "anns": []}

    seen_ann_ids: set[int] = set()
    anns_out: list[dict[str, Any]] = []
    next_id = max([a["id"] for a in data["annotations"] if isinstance(a, dict) and _is_id(a.get("id"))] + [0]) + 1
    for i, a in enumerate(data["annotations"]):
        bbox = a.get("bbox") if isinstance(a, dict) else None
        if not isinstance(a, dict) or not _is_id(a.get("image_id")) or not _is_id(a.get("category_id")) \
                or not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            report.add("malformed_entries", f"annotations[{i}]: needs image_id, category_id and bbox [x, y, w, h]")
            continue
        ann_id = a.get("id")
        duplicate = _is_id(ann_id) and ann_id in seen_ann_ids
        if duplicate:
            report.add("duplicate_annotation_ids", f"annotations[{i}]: id {ann_id} already used; given a new id")
        if _is_id(ann_id):
            seen_ann_ids.add(ann_id)
        img = images.get(a["image_id"])
        if img is None:
            report.add("unknown_image_ids", f"annotations[{i}]: image_id {a['image_id']} is not in images")
            continue
        if img.get("drop"):
            continue  # the image itself was reported
        if a["category_id"] not in cats:
            report.add("unknown_categories", f"annotations[{i}]: category_id {a['category_id']} is not in categories")
            continue
        x, y, bw, bh = (float(v) for v in bbox)
        box = clean_box([x, y, x + bw, y + bh], img["width"], img["height"], report,
                        f"annotations[{i}] ({img['file_name']})")
        if box is None:
            continue
        if duplicate or not _is_id(ann_id):
            ann_id, next_id = next_id, next_id + 1
        crowd = int(a.get("iscrowd", 0) or 0)
        area = a.get("area")
        area = float(area) if _is_number(area) and area > 0 else (box[2] - box[0]) * (box[3] - box[1])
        anns_out.append({"id": ann_id, "image_id": img["id"], "category_id": a["category_id"],
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "area": area, "iscrowd": crowd})
        if not crowd:  # crowd regions are ignored by COCOeval and not trained on (as torchvision's references)
            img["boxes"].append(box)
            img["labels"].append(index_of[a["category_id"]])

    kept = [im for im in images.values() if not im.get("drop")]
    records = [_record(im) for im in kept]
    report.counts["images"] = len(records)
    report.counts["boxes"] = sum(len(r.boxes) for r in records)
    gt = {"images": [{"id": im["id"], "file_name": im["file_name"], "width": im["width"], "height": im["height"]}
                     for im in kept],
          "annotations": anns_out,
          "categories": [{"id": cid, "name": cats[cid]} for cid in category_ids]}
    return DetectionSplit(root, split, "coco", records, names, category_ids, report, gt)


def _record(im: dict[str, Any]) -> ImageRecord:
    return ImageRecord(im["id"], im["file_name"], im["path"], im["width"], im["height"],
                       np.asarray(im["boxes"], dtype=np.float32).reshape(-1, 4),
                       np.asarray(im["labels"], dtype=np.int64).reshape(-1))


# ---------------------------------------------------------------------------------------------
# YOLO txt layout

def read_yolo_names(root: Path) -> list[str]:
    """Class names from ``ROOT/data.yaml`` (``names`` as a list or an {index: name} mapping)."""
    path = root / "data.yaml"
    if not path.is_file():
        raise DataError(f"{path} not found (the YOLO layout keeps its class names there)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise DataError(f"{path}: not valid YAML") from None
    names = data.get("names") if isinstance(data, dict) else None
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
        if not _inside(path, root):
            report.add("escaping_paths", f"{path} links outside {root}")
            continue
        try:
            w, h = image_size(path)
        except ImageReadError as exc:
            report.add("unreadable_images", f"{path}: {exc.reason}")
            continue
        if read_images and not _read_check(path, w, h, report):
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
        records.append(_record({"id": image_id, "file_name": rel.as_posix(), "path": path, "width": w, "height": h,
                                "boxes": boxes, "labels": labels}))
        gt_images.append({"id": image_id, "file_name": rel.as_posix(), "width": w, "height": h})
    report.counts["images"] = len(records)
    report.counts["boxes"] = sum(len(r.boxes) for r in records)
    category_ids = list(range(1, len(names) + 1))
    gt = {"images": gt_images, "annotations": gt_anns,
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    return DetectionSplit(root, split, "yolo", records, names, category_ids, report, gt)


# ---------------------------------------------------------------------------------------------
# either layout

def detect_layout(root: str | Path, split: str) -> str:
    """``coco`` if ``ROOT/annotations/<split>.json`` exists, else ``yolo`` if ``ROOT/labels/<split>``
    and ``ROOT/data.yaml`` exist; otherwise a DataError saying what was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    if (root / "annotations" / f"{split}.json").is_file():
        return "coco"
    if (root / "labels" / split).is_dir() and (root / "data.yaml").is_file():
        return "yolo"
    raise DataError(f"{root}: no {split!r} split found (expected annotations/{split}.json with images/{split}/, "
                    f"or labels/{split}/ with data.yaml)")


def load_detection_split(root: str | Path, split: str, *, layout: str = "auto", read_images: bool = False,
                         class_names: list[str] | None = None, log: bool = True) -> DetectionSplit:
    """Load one split of either layout, applying the check rules; prints the counts when anything
    was wrong (to stderr) and never raises for per-file problems."""
    layout = detect_layout(root, split) if layout == "auto" else layout
    loader = load_coco_split if layout == "coco" else load_yolo_split
    result = loader(root, split, read_images=read_images, class_names=class_names)
    if log and not result.report.ok:
        print(f"data check {result.report.summary()} (run `cvapps data check {root}` for details)", file=sys.stderr)
    return result


def available_splits(root: str | Path) -> list[str]:
    """Splits present under ROOT in either layout (train/val/test first, then others, sorted)."""
    root = Path(root)
    found = {p.stem for p in (root / "annotations").glob("*.json")}
    if (root / "data.yaml").is_file():
        found |= {p.name for p in (root / "labels").iterdir() if p.is_dir()} if (root / "labels").is_dir() else set()
    order = ["train", "val", "test"]
    return [s for s in order if s in found] + sorted(found - set(order))


def check_dataset(root: str | Path, splits: list[str] | None = None, *, layout: str = "auto",
                  read_images: bool = True) -> list[CheckReport]:
    """Run every rule on every split of ``root`` (decoding each image); one report per split."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    splits = splits or available_splits(root)
    if not splits:
        raise DataError(f"{root}: no dataset found (expected annotations/<split>.json or labels/<split>/ + data.yaml)")
    return [load_detection_split(root, s, layout=layout, read_images=read_images, log=False).report for s in splits]
