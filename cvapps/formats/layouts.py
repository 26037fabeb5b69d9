"""The dataset layouts cvapps reads and writes, told apart from the folder alone: the one list of
them (:data:`LAYOUTS`, in the order they are recognised), :func:`detect_layout`, the splits of
each and its loader. Every loader returns the checked :class:`~cvapps.formats.report.DetectionSplit`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from cvapps.errors import DataError
from cvapps.formats.coco import read_json
from cvapps.formats.coco_checks import load_coco_split
from cvapps.formats.cvat import ANNOTATIONS, cvat_splits, load_cvat_split
from cvapps.formats.labelme import is_labelme, labelme_splits, load_labelme_split
from cvapps.formats.objects import (
    CATEGORY_IDS,
    LABEL_LIST,
    files_with_suffix,
    sidecar_files,
)
from cvapps.formats.report import DetectionSplit
from cvapps.formats.voc import load_voc_split, standard, voc_splits
from cvapps.formats.xml_safe import read_xml
from cvapps.formats.yolo import load_yolo_split

#: name -> what the layout looks like, in the order :func:`detect_layout` tries them.
LAYOUTS: dict[str, str] = {
    "coco": "annotations/<split>.json + images/<split>/",
    "yolo": "data.yaml + labels/<split>/*.txt + images/<split>/",
    "voc": "Pascal VOC Annotations/*.xml + JPEGImages/ (+ ImageSets/Main/<split>.txt), or an .xml next to each image",
    "cvat": "CVAT for images 1.1 annotations.xml + images/",
    "labelme": "a LabelMe .json next to each image",
}

LOADERS: dict[str, Callable[..., DetectionSplit]] = {
    "coco": load_coco_split, "yolo": load_yolo_split, "voc": load_voc_split, "cvat": load_cvat_split,
    "labelme": load_labelme_split,
}

_SNIFFED = 10  # files looked at to tell an xml/json-next-to-each-image layout


def _sniff(root: Path, suffix: str, accept: Callable[[Path], bool]) -> bool:
    """Whether one of the first annotation files next to images is of the layout."""
    files = [f for items in sidecar_files(root, suffix).values() for f, _ in items]
    return any(accept(f) for f in files[:_SNIFFED])


def _is_voc_file(path: Path) -> bool:
    try:
        return read_xml(path).tag == "annotation"
    except DataError:
        return False


def _is_labelme_file(path: Path) -> bool:
    try:
        return is_labelme(read_json(path))
    except DataError:
        return False


def is_present(root: Path, layout: str) -> bool:
    """Whether ``root`` holds a dataset of ``layout`` (any split)."""
    if layout == "coco":
        return any(p.is_file() for p in (root / "annotations").glob("*.json"))
    if layout == "yolo":
        return (root / "data.yaml").is_file() and (root / "labels").is_dir()
    if layout == "voc":
        return standard(root) or _sniff(root, ".xml", _is_voc_file)
    if layout == "cvat":
        return (root / ANNOTATIONS).is_file()
    if layout == "labelme":
        return _sniff(root, ".json", _is_labelme_file)
    raise DataError(f"unknown dataset layout {layout!r} (known: {', '.join(LAYOUTS)})")


def layout_splits(root: str | Path, layout: str) -> list[str]:
    """The splits of the ``layout`` dataset in ``root`` (train/val/test first, then the others, sorted)."""
    root = Path(root)
    if layout == "coco":
        found = {p.stem for p in (root / "annotations").glob("*.json") if p.is_file()}
    elif layout == "yolo":
        found = {p.name for p in (root / "labels").iterdir() if p.is_dir()} if (root / "labels").is_dir() else set()
    else:
        found = set({"voc": voc_splits, "cvat": cvat_splits, "labelme": labelme_splits}[layout](root))
    order = [s for s in ("train", "val", "test") if s in found]
    return order + sorted(found - set(order))


def present_layouts(root: Path, names: Iterable[str] = LAYOUTS) -> Iterator[str]:
    """The layouts of ``names`` present in ``root``, lazily (telling LabelMe or VOC files next to the
    images walks the folders, so a COCO dataset is never walked)."""
    return (name for name in names if is_present(root, name))


def _known() -> str:
    return "; ".join(f"{name}: {what}" for name, what in LAYOUTS.items())


def detect_layout(root: str | Path, split: str | None = None) -> str:
    """The layout of the dataset in ``root`` (the first of :data:`LAYOUTS` present; with ``split``,
    the first that has that split); a one-line DataError listing the known layouts when none matches."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    for name in present_layouts(root):
        if split is None or split in layout_splits(root, name):
            return name
    # A dataset in a known layout that lacks only this split: name what it has, not every layout.
    for name in present_layouts(root):
        if layout_splits(root, name):
            have = ", ".join(repr(s) for s in layout_splits(root, name))
            raise DataError(f"{root}: no {split!r} split; its {name} layout has {have}")
    what = f"no {split!r} split" if split else "no dataset"
    raise DataError(f"{root}: {what} in a layout cvapps reads ({_known()})")


def load_split(root: str | Path, split: str, layout: str, **options: Any) -> DetectionSplit:
    """``split`` of ``root`` in ``layout`` through its loader (``read_images``, ``class_names``)."""
    if layout not in LOADERS:
        raise DataError(f"unknown dataset layout {layout!r} (known: {', '.join(LAYOUTS)})")
    return LOADERS[layout](root, split, **options)


def layout_inputs(root: str | Path, layout: str) -> list[Path]:
    """The annotation files of a ``layout`` dataset (protected from writes while converting it)."""
    root = Path(root)
    files = [root / LABEL_LIST, root / CATEGORY_IDS]
    if layout == "coco":
        files += list((root / "annotations").glob("*.json"))
    elif layout == "yolo":
        files += [root / "data.yaml", *files_with_suffix(root / "labels", ".txt")] if (root / "labels").is_dir() \
            else [root / "data.yaml"]
    elif layout == "voc" and standard(root):
        files += files_with_suffix(root / "Annotations", ".xml")
        if (root / "ImageSets").is_dir():
            files += files_with_suffix(root / "ImageSets", ".txt")
    elif layout == "cvat":
        files.append(root / ANNOTATIONS)
    elif layout in ("voc", "labelme"):
        suffix = ".xml" if layout == "voc" else ".json"
        files += [f for items in sidecar_files(root, suffix).values() for f, _ in items]
    return [f for f in files if f.is_file()]
