"""Dataset checking: the ``cvapps data check`` rules, which every loader applies (detection and
segmentation alike) through the readers of :mod:`cvapps.formats`.

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
malformed entry             entry dropped (e.g. a bbox that is not 4 numbers, a bad polygon or
                            RLE, ``iscrowd`` other than 0/1)
missing width/height        read from the image file's header
==========================  ===================================================================

A box edge outside the image by less than 0.01 px (rounding of normalised YOLO labels, a coordinate
that rounds to ``-0.0``) is clamped without a report.

A JSON file that is not a COCO dataset at all (not UTF-8, not JSON, NaN/Infinity values, nested too
deeply to parse, not an object, missing ``images``/``annotations``/``categories``, or one of them not
a list) is a one-line :class:`~cvapps.errors.DataError`.

Class index ``i`` <-> COCO category id ``category_ids[i]`` (the dataset's ids, sorted) and name
``class_names[i]``; YOLO datasets get category ids ``i + 1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cvapps.errors import DataError
from cvapps.formats.coco_checks import load_coco_split
from cvapps.formats.report import CheckReport, DetectionSplit, ImageRecord
from cvapps.formats.yolo import load_yolo_split

__all__ = ["CheckReport", "DetectionSplit", "ImageRecord", "available_splits", "check_dataset", "detect_layout",
           "load_detection_split"]


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
