"""What checking a dataset found, and the clean form every reader returns.

:class:`CheckReport` counts each problem kind (:data:`PROBLEM_KINDS`) and keeps one line per problem;
:class:`DetectionSplit` holds the kept images as :class:`ImageRecord` (boxes xyxy in original pixels,
0-based class indices, and for COCO files the segmentation of each object) plus a clean COCO ground
truth. The COCO and YOLO readers (:mod:`cvapps.formats.coco_checks`, :mod:`cvapps.formats.yolo`) both
fill these, so every task and ``cvapps data check`` apply one rule set.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvapps.errors import ImageReadError
from cvapps.io.images import read_image

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
    # COCO only: (category id, segmentation (polygons or RLE, checked), iscrowd) of every object,
    # crowd regions included (segmentation training marks them "ignore").
    segments: list[tuple[int, Any, int]] = field(default_factory=list)


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

def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


# Boxes may stick out of the image by this much (pixels) without a report: normalised 6-decimal
# YOLO labels put edges up to ~1e-6 * size outside (a coordinate that rounds to -0.0), which is
# rounding noise, not a labelling fault. Such boxes are still clamped.
SUBPIXEL = 0.01


def clean_box(xyxy: list[float], width: int, height: int, report: CheckReport, where: str) -> list[float] | None:
    """Clamp a box to the image (reported unless by less than :data:`SUBPIXEL`) and drop it when
    its area is zero (reported)."""
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    c = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
        report.add("zero_area_boxes", f"{where}: box {[round(v, 2) for v in xyxy]} has no area inside the "
                                      f"{width}x{height} image")
        return None
    if max(abs(a - b) for a, b in zip(c, (x1, y1, x2, y2))) >= SUBPIXEL:
        report.add("clamped_boxes", f"{where}: box {[round(v, 2) for v in xyxy]} clamped to the {width}x{height} image")
    return c


def read_check(path: Path, width: int, height: int, report: CheckReport) -> bool:
    """Decode the image (data check only): unreadable -> reported, False; size mismatch -> reported."""
    try:
        img = read_image(path)
    except ImageReadError as exc:
        report.add("unreadable_images", f"{path}: {exc.reason}")
        return False
    if img.shape[:2] != (height, width):
        report.add("size_mismatch", f"{path}: image is {img.shape[1]}x{img.shape[0]}, annotations say {width}x{height}")
    return True




def make_record(im: dict[str, Any]) -> ImageRecord:
    """An ImageRecord from a reader's working dict (``id, file_name, path, width, height, boxes, labels``)."""
    return ImageRecord(im["id"], im["file_name"], im["path"], im["width"], im["height"],
                       np.asarray(im["boxes"], dtype=np.float32).reshape(-1, 4),
                       np.asarray(im["labels"], dtype=np.int64).reshape(-1), im.get("segments", []))
