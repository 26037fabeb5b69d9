"""Labelled objects: the common ground of the labelling tools' formats (Pascal VOC, LabelMe, CVAT for
images). Their readers parse each file into :class:`ImageEntry` objects and :func:`build_split`
applies the ``data check`` rules once, into the same :class:`~cvapps.formats.report.DetectionSplit`
the COCO and YOLO readers give; :func:`split_objects` turns any split back into objects for the
writers, which return a :class:`Plan` that :mod:`cvapps.data.convert` carries out.

Conventions shared by these formats:

* coordinates are 0-based continuous pixels (a box over a whole W-wide image is x 0..W); VOC's
  1-based pixel indices are converted by :mod:`cvapps.formats.voc`;
* a *difficult* object (VOC ``<difficult>1``, a ``difficult`` flag in LabelMe, a ``difficult``
  attribute in CVAT) is ground truth with ``iscrowd: 1`` and is not trained on (see :func:`build_split`);
* classes: ``labels.txt`` (one name per line, LabelMe's ``--labels`` file; its ``__ignore__`` and
  ``_background_`` lines skipped) fixes their order where the format has no list of its own, with
  ``category_ids.txt`` (one id per line) when the COCO ids are not 1..K; without it, the names found
  in the whole dataset, sorted (VOC's own class order is alphabetical);
* splits of the formats with an annotation file next to each image are the folders
  ``ROOT/<split>/`` or ``ROOT/images/<split>/`` for the names in :data:`SPLIT_NAMES`; without such
  folders every file under ROOT belongs to the ``train`` split.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pycocotools import mask as mask_utils

from cvapps.errors import DataError, ImageReadError
from cvapps.formats.coco_encode import compressed_rle
from cvapps.formats.names import check_class_names
from cvapps.formats.report import (
    CheckReport,
    DetectionSplit,
    ImageRecord,
    clean_box,
    inside,
    make_record,
    read_check,
)
from cvapps.io.images import IMAGE_EXTENSIONS, image_size

SPLIT_NAMES = ("train", "val", "test", "valid", "validation", "trainval")
LABEL_LIST, CATEGORY_IDS = "labels.txt", "category_ids.txt"
_NOT_CLASSES = ("__ignore__", "_background_")  # LabelMe's labels.txt convention
_EXTENSIONS = sorted(IMAGE_EXTENSIONS) + sorted(e.upper() for e in IMAGE_EXTENSIONS)


@dataclass
class LabeledObject:
    """One object: a box (xyxy) and/or polygons (flat ``[x1, y1, x2, y2, ...]``, COCO's polygon
    form), in 0-based pixels; ``where`` names it in reports (file and object)."""

    label: str
    box: list[float] | None = None
    polygons: list[list[float]] = field(default_factory=list)
    difficult: bool = False
    where: str = ""

    def xyxy(self) -> list[float]:
        """The box, or the polygons' bounding box."""
        if self.box is not None:
            return list(self.box)
        xs = [v for p in self.polygons for v in p[0::2]]
        ys = [v for p in self.polygons for v in p[1::2]]
        return [min(xs), min(ys), max(xs), max(ys)]


@dataclass
class ImageEntry:
    """One annotated, existing image: its name in the split, its path, size (0: read the header)."""

    file_name: str
    path: Path
    width: int = 0
    height: int = 0
    objects: list[LabeledObject] = field(default_factory=list)


@dataclass
class LabelSet:
    """Class names in class-index order and their COCO category ids; ``fixed``: the dataset lists them."""

    names: list[str]
    category_ids: list[int]
    fixed: bool = False


@dataclass
class Plan:
    """What a writer will write: annotation files (path, a function making the text), images to
    place (destination, source) and notes on what the target format cannot hold."""

    files: list[tuple[Path, Callable[[], str]]] = field(default_factory=list)
    images: list[tuple[Path, Path]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# parsing helpers

def number(value: Any) -> float:
    """A finite number from text or JSON; ValueError for anything else (NaN, inf, booleans, words)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r:.30} is not a number")
    try:
        v = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r:.30} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{value!r:.30} is not a finite number")
    return v


def label_text(value: Any) -> str:
    """A class label: non-empty single-line printable text, stripped (ValueError otherwise)."""
    text = value.strip() if isinstance(value, str) else value
    try:
        check_class_names([text])
    except DataError:
        raise ValueError(f"label {value!r:.40} is not single-line printable text") from None
    return text


def polygon(values: Sequence[Any]) -> list[float]:
    """A flat polygon of at least 3 finite x, y points (ValueError otherwise)."""
    flat = [number(v) for v in values]
    if len(flat) < 6 or len(flat) % 2:
        raise ValueError("a polygon needs at least 3 x, y points")
    return flat


def relpath(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX), for reports; the path itself if not under it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def resolve_inside(root: Path, base: Path, name: str) -> Path | None:
    """``base / name`` (a ``\\`` read as ``/``), or None when ``name`` is absolute or the path leads
    outside ``root`` (through ``..`` or a symbolic link): annotation files never reach other files."""
    name = name.replace("\\", "/")
    if not name or PurePosixPath(name).is_absolute() or re.match(r"^[A-Za-z]:", name):
        return None
    path = Path(os.path.normpath(base / name))  # "a/../b" read as "b", then checked where it really leads
    return path if inside(path, root) else None


def name_in(path: Path, base: Path, root: Path) -> str:
    """An image's name in its split: relative to ``base``, or to ``root`` when it lies elsewhere."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return relpath(path, root)


def find_image(folder: Path, stem: str) -> Path | None:
    """``folder/<stem><ext>`` for the first image extension that exists."""
    for ext in _EXTENSIONS:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def split_folders(root: Path) -> dict[str, list[Path]]:
    """``{split: [ROOT/<split>, ROOT/images/<split>]}`` (those that exist) for the :data:`SPLIT_NAMES`."""
    found = {s: [d for d in (root / s, root / "images" / s) if d.is_dir()] for s in SPLIT_NAMES}
    return {s: dirs for s, dirs in found.items() if dirs}


def files_with_suffix(folder: Path, suffix: str) -> list[Path]:
    """Regular files ``*<suffix>`` (any case) under ``folder``, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() == suffix and p.is_file())


def sidecar_files(root: Path, suffix: str) -> dict[str, list[tuple[Path, Path]]]:
    """Annotation files ``*<suffix>`` of each split, with the folder their images' names are
    relative to (the split folder, or ROOT); see the module doc for the split rule."""
    out = {}
    for split, dirs in (split_folders(root) or {"train": [root]}).items():
        files = [(f, d) for d in dirs for f in files_with_suffix(d, suffix)]
        if files:
            out[split] = files
    return out


# ---------------------------------------------------------------------------------------------
# classes

def read_label_list(folder: Path) -> LabelSet | None:
    """``folder/labels.txt`` (+ ``category_ids.txt``) as a fixed LabelSet, or None when absent."""
    path = folder / LABEL_LIST
    if not path.is_file():
        return None
    names = [n.strip() for n in _text(path).splitlines() if n.strip() and n.strip() not in _NOT_CLASSES]
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: needs distinct class names, one per line")
    check_class_names(names, str(path))
    return LabelSet(names, read_category_ids(folder, len(names)), fixed=True)


def read_category_ids(folder: Path, count: int) -> list[int]:
    """``folder/category_ids.txt`` (``count`` distinct integers, one per line), else 1..count."""
    path = folder / CATEGORY_IDS
    if not path.is_file():
        return list(range(1, count + 1))
    try:
        ids = [int(v) for v in _text(path).split()]
    except ValueError:
        raise DataError(f"{path}: needs one integer category id per line") from None
    if len(ids) != count or len(set(ids)) != len(ids):
        raise DataError(f"{path}: needs {count} distinct ids, one per class")
    return ids


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def choose_labels(fixed: LabelSet | None, found: Iterable[str], class_names: list[str] | None,
                  where: Path | str) -> LabelSet:
    """The class order: the dataset's list (``fixed``, which ``class_names`` must equal), else
    ``class_names`` (e.g. the train split's, for val), else the ``found`` names sorted."""
    if fixed is not None:
        if class_names and list(class_names) != fixed.names:
            raise DataError(f"{where}: classes {fixed.names} differ from data.names {list(class_names)}")
        return fixed
    names = list(class_names) if class_names else sorted(set(found))
    if not names:
        raise DataError(f"{where}: no labelled objects to take class names from (list them in {LABEL_LIST}, "
                        "one per line)")
    return LabelSet(names, list(range(1, len(names) + 1)))


def label_files(out: Path, names: Sequence[str], category_ids: Sequence[int]) -> list[tuple[Path, Callable[[], str]]]:
    """``labels.txt`` (and ``category_ids.txt`` unless the ids are 1..K) of a written dataset."""
    return [(out / LABEL_LIST, lambda: "".join(f"{n}\n" for n in names)), *category_id_file(out, category_ids)]


def category_id_file(out: Path, category_ids: Sequence[int]) -> list[tuple[Path, Callable[[], str]]]:
    """``category_ids.txt`` when the ids are not 1..K (nothing otherwise)."""
    if list(category_ids) == list(range(1, len(category_ids) + 1)):
        return []
    return [(out / CATEGORY_IDS, lambda: "".join(f"{i}\n" for i in category_ids))]


# ---------------------------------------------------------------------------------------------
# objects -> checked split -> objects

def build_split(root: Path, split: str, layout: str, entries: Iterable[ImageEntry], report: CheckReport,
                labels: LabelSet, read_images: bool = False) -> DetectionSplit:
    """The checked split of ``entries`` (image ids 1..N in their order), with the rules of
    :mod:`cvapps.data.check`: duplicate images, unreadable files, unknown labels, boxes clamped or
    dropped. Polygons become the ground truth's COCO ``segmentation`` (and ``ImageRecord.segments``).

    Difficult objects are ground truth with ``iscrowd: 1`` and are not trained on: COCOeval, which
    ``cvapps val`` runs, ignores crowd objects in matching (a detection on one is neither a true nor
    a false positive, and it is not counted in recall), which is how VOC's devkit scores difficult
    objects; pycocotools has no other ignore flag (its ``ignore`` key is replaced by ``iscrowd``).
    The one difference: overlap with a crowd object is measured over the detection's area.
    """
    index = {n: i for i, n in enumerate(labels.names)}
    records: list[ImageRecord] = []
    gt_images: list[dict[str, Any]] = []
    gt_anns: list[dict[str, Any]] = []
    seen: dict[Path, str] = {}
    for entry in entries:
        key = entry.path.resolve()
        if key in seen:
            report.add("duplicate_image_ids", f"{entry.file_name}: annotated twice ({seen[key]}); later entry dropped")
            continue
        seen[key] = entry.file_name
        w, h = entry.width, entry.height
        if not (w > 0 and h > 0):
            try:
                w, h = image_size(entry.path)
            except ImageReadError as exc:
                report.add("unreadable_images", f"{entry.path}: {exc.reason}")
                continue
        if read_images and not read_check(entry.path, w, h, report):
            continue
        image_id = len(records) + 1
        boxes, classes, segments = [], [], []
        for obj in entry.objects:
            if obj.label not in index:
                report.add("unknown_categories", f"{obj.where}: {obj.label!r} is not one of the classes")
                continue
            box = clean_box(obj.xyxy(), w, h, report, obj.where)
            if box is None:
                continue
            cid, crowd = labels.category_ids[index[obj.label]], int(obj.difficult)
            area = (box[2] - box[0]) * (box[3] - box[1])
            ann = {"id": len(gt_anns) + 1, "image_id": image_id, "category_id": cid,
                   "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "area": area, "iscrowd": crowd}
            if obj.polygons:
                ann["segmentation"] = [[round(v, 3) for v in p] for p in obj.polygons]
                ann["area"] = float(mask_utils.area(compressed_rle(ann["segmentation"], h, w))) or area
                segments.append((cid, ann["segmentation"], crowd))
            gt_anns.append(ann)
            if not crowd:
                boxes.append(box)
                classes.append(index[obj.label])
        records.append(make_record({"id": image_id, "file_name": entry.file_name, "path": entry.path, "width": w,
                                    "height": h, "boxes": boxes, "labels": classes, "segments": segments}))
        gt_images.append({"id": image_id, "file_name": entry.file_name, "width": w, "height": h})
    report.counts["images"] = len(records)
    report.counts["boxes"] = sum(len(r.boxes) for r in records)
    gt = {"images": gt_images, "annotations": gt_anns,
          "categories": [{"id": c, "name": n} for c, n in zip(labels.category_ids, labels.names)]}
    return DetectionSplit(root, split, layout, records, list(labels.names), list(labels.category_ids), report, gt)


def split_objects(split: DetectionSplit) -> Iterator[tuple[ImageRecord, list[LabeledObject]]]:
    """Each image of ``split`` with its objects (from the ground truth, so crowd/difficult objects
    and polygon segmentations are kept; RLE masks are not polygons and leave only the box)."""
    name_of = dict(zip(split.category_ids, split.class_names))
    by_image: dict[int, list[LabeledObject]] = defaultdict(list)
    for a in split.gt["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        segm = a.get("segmentation")
        polys = [[float(v) for v in p] for p in segm] if isinstance(segm, list) else []
        by_image[a["image_id"]].append(LabeledObject(name_of[a["category_id"]], [x, y, x + w, y + h], polys,
                                                     bool(a.get("iscrowd"))))
    for rec in split.records:
        yield rec, by_image.get(rec.image_id, [])
