"""Segmentation datasets: images with class-index mask PNGs, or masks rasterised from COCO.

``ROOT/images/<split>/*`` with ``ROOT/masks/<split>/<stem>.png`` (pixel = class index, 0 background,
255 ignore) or ``ROOT/annotations/<split>.json`` (COCO polygons/RLE, rasterised with pycocotools).
Bad masks (size differs from the image, values >= the class count other than 255) are reported with
the file name and skipped when the split is scanned.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
import numpy as np
from torch.utils.data import Dataset
from cvapps.data.augment import IGNORE_INDEX, SamplePipeline
from cvapps.errors import DataError, ImageReadError
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


@dataclass
class SegmentExtra:
    """``DatasetSplits.val_extra``: COCO category id per class index (0 for background), and the
    files skipped while building the datasets as ``(path, reason)``."""

    category_ids: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_mask(path: str | Path) -> np.ndarray:
    """Single-channel class-index mask (PNG, 8 or 16 bit, grey or palette) -> HxW array.

    PIL keeps palette indices (OpenCV would expand a palette PNG to colours). Raises
    ImageReadError with a short reason.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "1"):
                raise ImageReadError(path, f"mask must be single-channel class indices, got mode {img.mode}")
            arr = np.array(img)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "mask file not found") from None
    except Exception:  # noqa: BLE001 - PIL raises many types for broken files
        raise ImageReadError(path, "unreadable or corrupt mask") from None
    return arr.astype(np.int64) if arr.dtype != np.uint8 else arr


def check_mask(mask: np.ndarray, hw: tuple[int, int], num_classes: int) -> str | None:
    """Why ``mask`` cannot be used with an image of size ``hw`` and ``num_classes`` classes, or None."""
    if mask.shape != tuple(hw):
        return f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image {hw[1]}x{hw[0]}"
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if len(bad):
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (" ..." if len(bad) > 5 else "")
        return f"mask values {shown} >= class count {num_classes} (only 0..{num_classes - 1} and {IGNORE_INDEX} allowed)"
    return None


def rasterize_coco(anns: list[tuple[int, Any, int]], height: int, width: int) -> np.ndarray:
    """COCO polygons/RLE -> HxW uint8 class-index mask (0 background, crowd regions 255).

    Larger objects are drawn first so smaller ones on top of them stay visible.
    """
    from pycocotools import mask as mask_utils

    out = np.zeros((height, width), dtype=np.uint8)
    decoded = []
    for cls, segm, crowd in anns:
        if isinstance(segm, list):  # polygons
            if not segm:
                continue
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = segm
        m = mask_utils.decode(rle).astype(bool)
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


def _coco_categories(path: Path) -> tuple[list[str], list[int], dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cats = sorted(data["categories"], key=lambda c: c["id"])
        return [str(c["name"]) for c in cats], [int(c["id"]) for c in cats], data
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a readable COCO annotation file ({type(exc).__name__}: {exc})") from None


def class_names_for(root: Path, names: list[str] | None) -> tuple[list[str], list[int]]:
    """Class names (background first) and the COCO category id of each class index.

    ``data.names`` wins; otherwise the categories of ``annotations/train.json``. Category ids
    default to the class index (mask value) when there is no COCO file.
    """
    ann = root / "annotations" / "train.json"
    cat_names, cat_ids = ([], [])
    if ann.is_file():
        cat_names, cat_ids, _ = _coco_categories(ann)
    if names:
        if cat_ids and len(cat_ids) + 1 != len(names):
            raise DataError(f"data.names has {len(names)} classes but {ann} has {len(cat_ids)} categories "
                            "plus background")
        return list(names), [0] + cat_ids if cat_ids else list(range(len(names)))
    if not cat_names:
        raise DataError(f"{root}: no class names: set data.names (background first, e.g. "
                        "[background, cat, dog]) or provide annotations/train.json with categories")
    return ["background"] + cat_names, [0] + cat_ids


def scan_split(root: Path, split: str, num_classes: int, category_ids: list[int],
               skipped: list[tuple[str, str]]) -> list[SegSample]:
    """Samples of one split; bad masks are appended to ``skipped`` as (path, reason) and left out."""
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
                w, h = image_size(img)  # (w, h); masks are (h, w) arrays
                reason = check_mask(read_mask(mask_path), (h, w), num_classes)
            except ImageReadError as exc:
                skipped.append((exc.path, exc.reason))
                continue
            if reason:
                skipped.append((str(mask_path), reason))
                continue
            samples.append(SegSample(str(img), str(mask_path)))
    elif ann.is_file():
        _, _, data = _coco_categories(ann)
        index_of = {cid: i for i, cid in enumerate(category_ids) if i > 0}
        by_image: dict[int, list] = {}
        for a in data.get("annotations", []):
            by_image.setdefault(a.get("image_id"), []).append(a)
        for info in sorted(data.get("images", []), key=lambda d: d["id"]):
            path = images_dir / info["file_name"]
            anns, bad = [], None
            for a in by_image.get(info["id"], []):
                if a.get("category_id") not in index_of:
                    bad = f"annotation {a.get('id')} has category_id {a.get('category_id')} not in the categories"
                    break
                if "segmentation" in a:
                    anns.append((index_of[a["category_id"]], a["segmentation"], int(a.get("iscrowd", 0))))
            if bad is None:
                try:
                    w, h = image_size(path)
                    if (w, h) != (info["width"], info["height"]):
                        bad = f"image is {w}x{h} but {ann.name} says {info['width']}x{info['height']}"
                except ImageReadError as exc:
                    bad = exc.reason
            if bad:
                skipped.append((str(path), bad))
                continue
            samples.append(SegSample(str(path), None, info["height"], info["width"], anns))
    else:
        raise DataError(f"no masks for {images_dir}: expected {masks_dir}/<stem>.png or {ann}")
    return samples
