"""Dataset checking: the ``cvapps data check`` rules, which every loader applies (detection and
segmentation alike) through the readers of :mod:`cvapps.formats`.

Every layout (COCO, YOLO txt, Pascal VOC, CVAT for images, LabelMe; :data:`LAYOUTS`, told apart by
:func:`detect_layout`) is read into one clean form (:class:`DetectionSplit`): per image its path, size and
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
from cvapps.formats.layouts import (
    LAYOUTS,
    detect_layout,
    layout_splits,
    load_split,
    present_layouts,
)
from cvapps.formats.report import CheckReport, DetectionSplit, ImageRecord

__all__ = ["LAYOUTS", "CheckReport", "DetectionSplit", "ImageRecord", "available_splits", "check_dataset",
           "detect_layout", "has_split", "load_detection_split"]


# ---------------------------------------------------------------------------------------------
# any layout

def load_detection_split(root: str | Path, split: str, *, layout: str = "auto", read_images: bool = False,
                         class_names: list[str] | None = None, log: bool = True) -> DetectionSplit:
    """Load one split of any layout (``auto``: :func:`detect_layout`), applying the check rules; prints
    the counts when anything was wrong (to stderr) and never raises for per-file problems."""
    layout = detect_layout(root, split) if layout == "auto" else layout
    result = load_split(root, split, layout, read_images=read_images, class_names=class_names)
    if log and not result.report.ok:
        print(f"data check {result.report.summary()} (run `cvapps data check {root}` for details)", file=sys.stderr)
    return result


def available_splits(root: str | Path, layout: str = "auto") -> list[str]:
    """Splits of ``root`` (train/val/test first, then others, sorted). ``auto``: those of the COCO
    and YOLO layouts when either is there (each split then loads from the first that has it), else
    those of the layout detected."""
    root = Path(root)
    if layout != "auto":
        return layout_splits(root, layout)
    if not root.is_dir():
        return []
    chosen = list(present_layouts(root, ("coco", "yolo"))) or [n for n in [next(present_layouts(root), None)] if n]
    found = {s for n in chosen for s in layout_splits(root, n)}
    order = ["train", "val", "test"]
    return [s for s in order if s in found] + sorted(found - set(order))


def has_split(root: str | Path, split: str) -> bool:
    """Whether ``root`` has annotations for ``split`` in any layout."""
    try:
        detect_layout(root, split)
    except DataError:
        return False
    return True


def check_dataset(root: str | Path, splits: list[str] | None = None, *, layout: str = "auto",
                  read_images: bool = True) -> list[CheckReport]:
    """Run every rule on every split of ``root`` (decoding each image); one report per split."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    splits = splits or available_splits(root, layout)
    if not splits:
        detect_layout(root)  # the one-line error listing the layouts
        raise DataError(f"{root}: no splits of the {layout} layout found ({LAYOUTS.get(layout, '')})")
    return [load_detection_split(root, s, layout=layout, read_images=read_images, log=False).report for s in splits]
