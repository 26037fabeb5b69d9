"""Sinks for segmentation predictions: colour overlays, class-index mask PNGs and COCO RLE JSON.

File names follow the input: ``photo.jpg`` -> ``overlays/photo.jpg`` and ``masks/photo.png``;
video frames ``clip.mp4#frame=000123`` -> ``clip_000123``. Two inputs with the same stem (e.g.
``a/x.jpg`` and ``b/x.jpg`` in a recursive folder) get ``x.jpg`` and ``x_1.jpg``. Every file is
written atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cvapps.checkpoint import atomic_write_text
from cvapps.io.coco_segm import mask_to_coco, placeholder_entry, results_to_json
from cvapps.io.images import write_image
from cvapps.io.overlay import overlay_mask
from cvapps.structures import Frame, SegmentationMask

_FRAME = re.compile(r"^(?P<video>.*)#frame=(?P<index>\d+)$")


def output_stem(source: str) -> str:
    """``/x/photo.jpg`` -> ``photo``; ``/x/clip.mp4#frame=000123`` -> ``clip_000123``; ``webcam0#frame=7`` -> ``webcam0_7``."""
    m = _FRAME.match(source)
    if m:
        return f"{Path(m['video']).stem or 'frame'}_{m['index']}"
    stem = Path(source).stem
    return re.sub(r"[^\w.\-]+", "_", stem) or "image"


class _UniqueNames:
    """Hands out each stem once (``x``, ``x_1``, ``x_2`` ...) so outputs never overwrite each other."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, source: str) -> str:
        stem = base = output_stem(source)
        n = 0
        while stem in self.used:
            n += 1
            stem = f"{base}_{n}"
        self.used.add(stem)
        return stem


class OverlayWriter:
    """``DIR/<stem>.jpg``: the input with class colours blended in and a legend of the classes present."""

    def __init__(self, out_dir: str | Path, class_names: list[str], alpha: float = 0.5, ext: str = ".jpg") -> None:
        self.out_dir, self.class_names, self.alpha, self.ext = Path(out_dir), class_names, alpha, ext
        self.names = _UniqueNames()
        self.count = 0

    def write(self, frame: Frame, prediction: SegmentationMask) -> None:
        image = overlay_mask(frame.image, prediction.mask, self.alpha, class_names=self.class_names)
        write_image(self.out_dir / f"{self.names(frame.source)}{self.ext}", image)
        self.count += 1

    def close(self) -> None:
        pass


class MaskWriter:
    """``DIR/<stem>.png``: single-channel uint8 class index per pixel (0 = background), the same
    format as training masks, so predictions can be corrected and trained on."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.names = _UniqueNames()
        self.count = 0

    def write(self, frame: Frame, prediction: SegmentationMask) -> None:
        write_image(self.out_dir / f"{self.names(frame.source)}.png", prediction.mask.astype(np.uint8))
        self.count += 1

    def close(self) -> None:
        pass


class CocoSegmJSON:
    """``predictions.json``: COCO results (compressed RLE), one entry per image and class present.

    image_id: the file stem when it is a number (COCO's own file naming, e.g. ``000000397133.jpg``),
    otherwise the frame's position in the source + 1 (so a folder sorted like the COCO file's
    images, as the shapes sample, matches its ids). ``file_name`` is kept in each entry.
    When nothing at all was predicted, one score-0 empty-mask placeholder is written so that
    pycocotools' ``loadRes`` still accepts the file (see :mod:`cvapps.io.coco_segm`).
    """

    def __init__(self, path: str | Path, category_ids: list[int]) -> None:
        self.path, self.category_ids = Path(path), list(category_ids)
        self.entries: list[dict] = []
        self.first_image: tuple[int, int, int, str] | None = None

    def write(self, frame: Frame, prediction: SegmentationMask) -> None:
        stem = Path(frame.source).stem
        image_id = int(stem) if stem.isdigit() else frame.index + 1
        if self.first_image is None:
            self.first_image = (image_id, *prediction.mask.shape[:2], Path(frame.source).name)
        self.entries += mask_to_coco(prediction.mask, prediction.scores, image_id, self.category_ids,
                                     file_name=Path(frame.source).name)

    def close(self) -> None:
        entries = self.entries
        if not entries and self.first_image is not None and len(self.category_ids) > 1:
            image_id, h, w, name = self.first_image
            entries = [placeholder_entry(image_id, h, w, self.category_ids[1], name)]
        atomic_write_text(self.path, results_to_json(entries))
