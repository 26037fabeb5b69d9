"""Segmentation datasets: images with class-index mask PNGs, or masks rasterised from COCO.

``ROOT/images/<split>/*`` with ``ROOT/masks/<split>/<stem>.png`` (pixel = class index, 0 background,
255 ignore; :mod:`cvapps.formats.masks`) or ``ROOT/annotations/<split>.json`` (COCO polygons/RLE,
read with the same check rules as detection by :func:`cvapps.formats.coco_checks.load_coco_split`
and rasterised with pycocotools). Bad masks (size differs from the image, values >= the class count
other than 255), bad annotations and unreadable images are reported with the file name and skipped
when the split is scanned.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from cvapps.data.augment import IGNORE_INDEX, SamplePipeline
from cvapps.errors import DataError, ImageReadError
from cvapps.formats.coco import read_coco_json
from cvapps.formats.coco_checks import load_coco_split, read_categories
from cvapps.formats.coco_encode import rle_to_mask
from cvapps.formats.masks import check_mask, read_mask
from cvapps.formats.names import check_class_names
from cvapps.formats.report import CheckReport
from cvapps.io.images import IMAGE_EXTENSIONS, image_size, read_image


@dataclass
class SegSample:
    """One image and where its mask comes from: a PNG file, or COCO polygons/RLE to rasterise."""

    image: str
    mask: str | None = None
    height: int = 0
    width: int = 0
    # (class index, COCO segmentation, iscrowd) for COCO-annotated samples
    anns: list[tuple[int, Any, int]] = field(default_factory=list)
    labelled: bool = True  # its mask has an object pixel (not only background / ignore)


@dataclass
class SegmentExtra:
    """``DatasetSplits.val_extra``: COCO category id per class index (0 for background), and the
    files skipped while building the datasets as ``(path, reason)``."""

    category_ids: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def rasterize_coco(anns: list[tuple[int, Any, int]], height: int, width: int) -> np.ndarray:
    """COCO polygons/RLE -> HxW uint8 class-index mask (0 background, crowd regions 255).

    Larger objects are drawn first so smaller ones on top of them stay visible.
    """
    out = np.zeros((height, width), dtype=np.uint8)
    decoded = []
    for cls, segm, crowd in anns:
        m = rle_to_mask(segm, height, width)
        decoded.append((int(m.sum()), cls, m, crowd))
    for _, cls, m, crowd in sorted(decoded, key=lambda t: -t[0]):
        out[m] = IGNORE_INDEX if crowd else cls
    return out


class SegmentationDataset(Dataset):
    """Yields ``(image uint8 (C, S, S), mask int64 (S, S))`` or None for an unreadable image."""

    def __init__(self, samples: list[SegSample], pipeline: SamplePipeline) -> None:
        self.samples, self.pipeline = samples, pipeline

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.samples[i]
        image = read_image(s.image)
        if s.mask is not None:
            mask = read_mask(s.mask)
        else:
            mask = rasterize_coco(s.anns, image.shape[0], image.shape[1])
        return image, mask.astype(np.uint8)

    def __getitem__(self, i: int) -> Any:
        try:
            image, mask = self.load(i)
        except ImageReadError as exc:
            print(f"skipped {exc}", file=sys.stderr)
            return None
        if mask.shape != image.shape[:2]:  # changed on disk since the dataset was built
            print(f"skipped {self.samples[i].image}: mask size differs from the image", file=sys.stderr)
            return None
        out = self.pipeline(image, mask=mask)
        return out["image"], out["mask"]


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def _coco_categories(path: Path) -> tuple[list[str], list[int]]:
    """Names and ids (sorted by id) of a COCO file's categories, read with the check rules."""
    cats = read_categories(read_coco_json(path), CheckReport(path.stem), path)
    ids = sorted(cats)
    return [str(cats[i]) for i in ids], ids


def class_names_for(root: Path, names: list[str] | None, split: str = "train") -> tuple[list[str], list[int]]:
    """Class names (background first) and the COCO category id of each class index.

    ``data.names`` (or a checkpoint's classes, for ``cvapps val``) must then be the categories of
    ``annotations/<split>.json`` (else ``train.json``) after the background, as detection requires
    of its data (same message): a model is never scored against classes it does not know. Without
    ``data.names`` the categories are the classes. Category ids default to the class index (mask
    value) when there is no COCO file. Names must be single-line printable text.
    """
    ann = root / "annotations" / f"{split}.json"
    ann = ann if ann.is_file() else root / "annotations" / "train.json"
    cat_names, cat_ids = ([], [])
    if ann.is_file():
        cat_names, cat_ids = _coco_categories(ann)
    if names:
        if cat_ids and len(cat_ids) + 1 != len(names):
            raise DataError(f"data.names has {len(names)} classes but {ann} has {len(cat_ids)} categories "
                            "plus background")
        if cat_names and list(names[1:]) != cat_names:  # the detection datasets' rule (coco_checks)
            raise DataError(f"{ann}: categories {cat_names} differ from data.names {list(names[1:])} "
                            "(after the background)")
        return check_class_names(names, str(ann) if cat_ids else ""), [0] + cat_ids if cat_ids else list(range(len(names)))
    if not cat_names:
        raise DataError(f"{root}: no class names: set data.names (background first, e.g. "
                        "[background, cat, dog]) or provide annotations/train.json with categories")
    return check_class_names(["background"] + cat_names, str(ann)), [0] + cat_ids


def scan_split(root: Path, split: str, num_classes: int, category_ids: list[int],
               skipped: list[tuple[str, str]], class_names: list[str] | None = None) -> list[SegSample]:
    """Samples of one split; bad masks are appended to ``skipped`` as (path, reason) and left out.
    class_names (background first): a COCO split's categories must be these (as for detection).
    Each sample's ``labelled`` says whether its mask has any object pixel."""
    images_dir, masks_dir, ann = root / "images" / split, root / "masks" / split, root / "annotations" / f"{split}.json"
    if not images_dir.is_dir():
        raise DataError(f"segmentation images not found: {images_dir} (expected ROOT/images/<split>/*)")
    samples: list[SegSample] = []
    if masks_dir.is_dir():
        for img in _list_images(images_dir):
            mask_path = masks_dir / f"{img.stem}.png"
            if not mask_path.is_file():
                skipped.append((str(img), f"no mask {mask_path.name} in {masks_dir}"))
                continue
            try:
                w, h = image_size(img)
                mask = read_mask(mask_path)
                reason = check_mask(mask, (h, w), num_classes)
            except ImageReadError as exc:
                skipped.append((exc.path, exc.reason))
                continue
            if reason:
                skipped.append((str(mask_path), reason))
                continue
            labelled = bool(((mask > 0) & (mask != IGNORE_INDEX)).any())
            samples.append(SegSample(str(img), str(mask_path), labelled=labelled))
    elif ann.is_file():
        samples = _coco_samples(root, split, category_ids, skipped, class_names)
    else:
        raise DataError(f"no masks for {images_dir}: expected {masks_dir}/<stem>.png or {ann}")
    return samples


def _coco_samples(root: Path, split: str, category_ids: list[int],
                  skipped: list[tuple[str, str]], class_names: list[str] | None = None) -> list[SegSample]:
    """Samples of a COCO-annotated split: the data-check rules drop bad entries (each reported in
    ``skipped`` against the annotation file); an image whose file differs in size from its entry,
    or with an object of a category that is not a class, is skipped."""
    ann = root / "annotations" / f"{split}.json"
    checked = load_coco_split(root, split, segments=True, class_names=list(class_names[1:]) if class_names else None)
    skipped += [(str(ann), problem) for problem in checked.report.problems]
    index_of = {cid: i for i, cid in enumerate(category_ids) if i > 0}
    samples: list[SegSample] = []
    for rec in checked.records:
        bad = next((f"category_id {cid} is not one of the classes" for cid, _, _ in rec.segments
                    if cid not in index_of), None)
        if bad is None:
            try:
                w, h = image_size(rec.path)
                if (h, w) != (rec.height, rec.width):
                    bad = f"image is {w}x{h} but {ann.name} says {rec.width}x{rec.height}"
            except ImageReadError as exc:
                bad = exc.reason
        if bad:
            skipped.append((str(rec.path), bad))
            continue
        anns = [(index_of[cid], segm, crowd) for cid, segm, crowd in rec.segments]
        samples.append(SegSample(str(rec.path), None, rec.height, rec.width, anns,
                                 labelled=any(not crowd for _, _, crowd in anns)))
    return samples
