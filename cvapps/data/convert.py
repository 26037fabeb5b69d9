"""``cvapps data convert``: between every layout cvapps reads (COCO, YOLO txt, Pascal VOC, CVAT for
images, LabelMe; :data:`~cvapps.formats.layouts.LAYOUTS`), through the checked form of a split.

* The source is read with the ``data check`` rules, so the output is clean; all its splits must
  have the same classes. Class order and COCO category ids are kept: COCO's ids, YOLO's
  ``data.yaml`` ``category_ids`` (written by this command), ``labels.txt`` + ``category_ids.txt``
  of VOC and LabelMe, CVAT's label list + ``category_ids.txt``; converting back restores them.
* Polygons travel where both formats hold them (COCO polygon segmentations, YOLO segmentation
  lines, LabelMe and CVAT polygons; RLE masks leave only their box); VOC gets boxes. Difficult and
  crowd objects keep their ignore flag (COCO ``iscrowd``, VOC ``difficult``, LabelMe's flag, CVAT's
  attribute); YOLO txt has none, so they are left out there (a note says how many).
* With ``out`` (another folder) the target's own layout is written there with the images copied.
  Without it, next to the source: VOC and LabelMe files beside each image, CVAT's
  ``annotations.xml`` naming the images where they are, COCO and YOLO files with images copied to
  ``images/<split>/`` unless they are there already.
* Existing annotation files are replaced only with ``overwrite``; the source's never.

COCO -> YOLO writes ``OUT/labels/<split>/<stem>.txt`` and ``OUT/data.yaml`` (``names``, plus
``category_ids``); YOLO -> COCO ``OUT/annotations/<split>.json`` with image ids 1..N (sorted names).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from cvapps.checkpoint import atomic_write_text
from cvapps.data.check import (
    DetectionSplit,
    available_splits,
    detect_layout,
    load_detection_split,
)
from cvapps.errors import DataError
from cvapps.formats.coco import dumps, read_coco_json
from cvapps.formats.coco_checks import check_segmentation
from cvapps.formats.cvat import cvat_plan
from cvapps.formats.labelme import labelme_plan
from cvapps.formats.layouts import LAYOUTS, layout_inputs
from cvapps.formats.objects import (
    CATEGORY_IDS,
    LABEL_LIST,
    SPLIT_NAMES,
    Plan,
    split_objects,
)
from cvapps.formats.report import is_id
from cvapps.formats.voc import voc_plan
from cvapps.formats.yolo import data_yaml_text, read_data_yaml, yolo_label_text
from cvapps.io.guard import protected
from cvapps.io.safe_write import copy_file


def input_folders(root: str | Path) -> list[Path]:
    """Folders of a dataset that a separate output folder may not lie in (any layout)."""
    names = ("images", "annotations", "labels", "Annotations", "JPEGImages", "ImageSets", *SPLIT_NAMES)
    return [Path(root) / n for n in names]


def _check_writable(paths: list[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]} exists (and {len(existing) - 1} more); pass --overwrite to replace")


# ---------------------------------------------------------------------------------------------
# COCO and YOLO targets (the other formats' writers are in their modules)

def _copy_to_images(splits: Sequence[DetectionSplit], out: Path) -> list[tuple[Path, Path]]:
    return [(out / "images" / sp.split / rec.file_name, rec.path) for sp in splits for rec in sp.records]


def _coco_text(sp: DetectionSplit) -> str:
    anns = [{**a, "bbox": [round(float(v), 3) for v in a["bbox"]], "area": round(float(a["area"]), 3)}
            for a in sp.gt["annotations"]]
    return dumps({"info": {"description": f"converted from {sp.layout} ({sp.split})"}, "licenses": [],
                  "images": sp.gt["images"], "annotations": anns,
                  "categories": [{"id": c, "name": n} for c, n in zip(sp.category_ids, sp.class_names)]})


def coco_plan(splits: Sequence[DetectionSplit], out: Path, in_place: bool) -> Plan:
    """``OUT/annotations/<split>.json``; images in ``OUT/images/<split>/``."""
    files = [(out / "annotations" / f"{sp.split}.json", partial(_coco_text, sp)) for sp in splits]
    return Plan(files=files, images=_copy_to_images(splits, out))


def _yolo_text(objects: Sequence[Any], index: dict[str, int], width: int, height: int) -> str:
    return yolo_label_text([o.xyxy() for o in objects], [index[o.label] for o in objects], width, height,
                           [o.polygons for o in objects])


def yolo_plan(splits: Sequence[DetectionSplit], out: Path, in_place: bool) -> Plan:
    """``OUT/labels/<split>/<stem>.txt`` (class = index in the class order) and ``OUT/data.yaml``
    (``names`` and ``category_ids``); images in ``OUT/images/<split>/``."""
    plan = Plan(images=_copy_to_images(splits, out))
    names, ids = splits[0].class_names, splits[0].category_ids
    index = {n: i for i, n in enumerate(names)}
    dropped = 0
    for sp in splits:
        for rec, objects in split_objects(sp):
            kept = [o for o in objects if not o.difficult]
            dropped += len(objects) - len(kept)
            stem = PurePosixPath(rec.file_name).with_suffix("").as_posix()
            plan.files.append((out / "labels" / sp.split / f"{stem}.txt",
                               partial(_yolo_text, kept, index, rec.width, rec.height)))
    plan.files.append((out / "data.yaml", partial(data_yaml_text, names, {sp.split: f"images/{sp.split}" for sp in splits},
                                                  {"category_ids": list(ids)})))
    if dropped:
        plan.notes.append(f"{dropped} difficult/crowd objects left out (YOLO txt has no ignore flag)")
    return plan


PLANS: dict[str, Callable[[Sequence[DetectionSplit], Path, bool], Plan]] = {
    "coco": coco_plan, "yolo": yolo_plan, "voc": voc_plan, "cvat": cvat_plan, "labelme": labelme_plan,
}


# ---------------------------------------------------------------------------------------------
# reading the source

def _with_category_ids(sp: DetectionSplit, ids: list[int]) -> DetectionSplit:
    remap = dict(zip(sp.category_ids, ids))
    gt = {**sp.gt, "annotations": [{**a, "category_id": remap[a["category_id"]]} for a in sp.gt["annotations"]],
          "categories": [{"id": c, "name": n} for c, n in zip(ids, sp.class_names)]}
    return replace(sp, category_ids=list(ids), gt=gt)


def _add_coco_polygons(sp: DetectionSplit) -> None:
    """The COCO reader's ground truth keeps boxes; put back each object's polygon segmentation
    (matched by annotation id; renumbered duplicates keep their box only)."""
    raw = read_coco_json(sp.root / "annotations" / f"{sp.split}.json")
    segm_of: dict[int, Any] = {}
    for a in raw["annotations"]:
        if isinstance(a, dict) and is_id(a.get("id")) and a["id"] not in segm_of:
            segm_of[a["id"]] = a.get("segmentation")
    size = {im["id"]: (im["height"], im["width"]) for im in sp.gt["images"]}
    for ann in sp.gt["annotations"]:
        segm = segm_of.get(ann["id"])
        if isinstance(segm, list) and segm and check_segmentation(segm, *size[ann["image_id"]]) is None:
            ann["segmentation"] = segm


def load_source(root: Path, layout: str, splits: list[str] | None) -> list[DetectionSplit]:
    """Every split (or ``splits``) of the source, checked, with the same classes, ids and polygons."""
    names = splits or available_splits(root, layout)
    loaded = [load_detection_split(root, s, layout=layout) for s in names]
    if not loaded:
        raise DataError(f"{root}: no {layout} splits to convert ({LAYOUTS[layout]})")
    first = loaded[0]
    for sp in loaded[1:]:
        if sp.category_ids != first.category_ids or sp.class_names != first.class_names:
            raise DataError(f"{root}: splits {first.split!r} and {sp.split!r} have different categories")
    if layout == "yolo":  # ids written by an earlier conversion from COCO
        ids = read_data_yaml(root).get("category_ids")
        if (isinstance(ids, list) and len(ids) == len(first.class_names) and len(set(ids)) == len(ids)
                and all(is_id(i) for i in ids)):
            loaded = [_with_category_ids(sp, ids) for sp in loaded]
    if layout == "coco":
        for sp in loaded:
            _add_coco_polygons(sp)
    return loaded


# ---------------------------------------------------------------------------------------------
# converting

def _carry_out(plan: Plan, out: Path, overwrite: bool) -> None:
    targets = [p for p, _ in plan.files]
    top = Path(os.path.abspath(out))
    for path in targets + [dst for dst, _ in plan.images]:
        # names only (a ".." in an image's name); links planted in OUT are refused by the writes
        if not Path(os.path.normpath(os.path.abspath(path))).is_relative_to(top):
            raise DataError(f"{path} would be written outside {out}; refusing")
    # labels.txt / category_ids.txt serve VOC and LabelMe alike: the same list already there is kept
    shared = {p for p, make in plan.files if p.name in (LABEL_LIST, CATEGORY_IDS) and p.is_file()
              and p.read_text(encoding="utf-8", errors="replace") == make()}
    _check_writable([p for p in targets if p not in shared], overwrite)
    copies = dict(plan.images)  # an image of several splits (VOC's trainval) is placed once per target
    for dst, src in copies.items():
        if not (dst.exists() and dst.resolve() == src.resolve()):
            copy_file(src, dst)  # copied again: a fresh file, whatever is there
    for path, make in plan.files:
        if path not in shared:
            atomic_write_text(path, make())


def convert_dataset(root: str | Path, to: str, out: str | Path | None = None, splits: list[str] | None = None, *,
                    overwrite: bool = False, layout: str = "auto") -> list[DetectionSplit]:
    """Write the ``to`` layout of ``root`` (its ``layout``, default detected) under ``out`` (default
    ``root``); returns the splits read. Notes on what the target cannot hold go to stderr."""
    root = Path(root)
    out = Path(out) if out is not None else root
    if to not in PLANS:
        raise DataError(f"unknown target layout {to!r} (known: {', '.join(PLANS)})")
    source = detect_layout(root) if layout == "auto" else layout
    in_place = out.resolve() == root.resolve()
    if in_place and source == to:
        raise DataError(f"{root} is already in the {to} layout; pass --out to write a copy")
    # out is an output root (every file written inside it through no link); the source's annotation
    # files are inputs, never replaced
    with protected(out, files=[], option="--out ", others=layout_inputs(root, source)):
        loaded = load_source(root, source, splits)
        plan = PLANS[to](loaded, out, in_place)
        _carry_out(plan, out, overwrite)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    return loaded


def coco_to_yolo(root: str | Path, out: str | Path | None = None, splits: list[str] | None = None,
                 overwrite: bool = False) -> list[DetectionSplit]:
    """Write the YOLO txt layout of every COCO split of ``root`` under ``out`` (default: ``root``)."""
    return convert_dataset(root, "yolo", out, splits, overwrite=overwrite, layout="coco")


def yolo_to_coco(root: str | Path, out: str | Path | None = None, splits: list[str] | None = None,
                 overwrite: bool = False) -> list[DetectionSplit]:
    """Write ``annotations/<split>.json`` for every YOLO split of ``root`` under ``out`` (default ``root``)."""
    return convert_dataset(root, "coco", out, splits, overwrite=overwrite, layout="yolo")
