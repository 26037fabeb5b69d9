"""Large generated scenes with many small objects (aerial/inspection-like): what slicing and tiling
are for. ``generate_scenes(out, SceneSpec(...))`` writes the COCO layout (``images/<split>/*.jpg``,
``annotations/<split>.json`` with polygons) plus class-index masks (``masks/<split>/*.png``), with the
shapes dataset's classes (circle, square, triangle) drawn by :mod:`cvapps.data.synth`'s painters.
``cvapps data synth OUT --large 1500x1000`` runs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cvapps.data.paint import (  # the shapes dataset's painters: one look for every generated image
    _SHIFT,
    _colour,
    _draw,
    _encode,
    _finish,
    _polygon,
    _pts,
    _texture,
)
from cvapps.data.synth import CLASS_NAMES, _atomic_write
from cvapps.errors import CvappsError


@dataclass(frozen=True)
class SceneSpec:
    """n_train / n_val: images per split; width, height: pixels (64..12000); objects: (fewest, most)
    objects per image; sizes: (smallest, largest) object side in pixels."""

    n_train: int = 8
    n_val: int = 4
    width: int = 1500
    height: int = 1000
    objects: tuple[int, int] = (40, 80)
    sizes: tuple[float, float] = (15.0, 40.0)

    def __post_init__(self) -> None:
        if not (64 <= self.width <= 12000 and 64 <= self.height <= 12000):
            raise CvappsError(f"scene size must be 64..12000 px a side, got {self.width}x{self.height}")
        if self.n_train < 0 or self.n_val < 0 or not 0 <= self.objects[0] <= self.objects[1] \
                or not 4 <= self.sizes[0] <= self.sizes[1] < min(self.width, self.height) / 2:
            raise CvappsError("scenes: need image counts >= 0, 0 <= fewest <= most objects and 4 <= smallest "
                              "<= largest size < half the image")


def render_scene(rng: np.random.Generator, spec: SceneSpec) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One BGR scene, its class-index mask (0 background) and its objects ``{"cls", "poly", "box"
    (x, y, w, h)}``, none overlapping another."""
    h, w = spec.height, spec.width
    img = _texture(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    taken = np.zeros((h, w), bool)
    objects: list[dict] = []
    for _ in range(int(rng.integers(spec.objects[0], spec.objects[1] + 1))):
        for _try in range(20):  # rejection sampling: a free spot (with a 2 px gap)
            cls, r = int(rng.integers(0, len(CLASS_NAMES))), rng.uniform(*spec.sizes) / 2
            cx, cy = rng.uniform(r + 1, w - 1 - r), rng.uniform(r + 1, h - 1 - r)
            x0, y0, x1, y1 = int(cx - r) - 2, int(cy - r) - 2, int(cx + r) + 3, int(cy + r) + 3
            if not taken[max(0, y0):y1, max(0, x0):x1].any():
                break
        else:
            continue
        taken[max(0, y0):y1, max(0, x0):x1] = True
        poly = _polygon(cls, cx, cy, r, rng.uniform(0, 2 * np.pi)).round(2)
        lo, hi = poly.min(0), poly.max(0)
        patch = img[max(0, y0):y1, max(0, x0):x1].reshape(-1, 3).mean(0)
        _draw(img, poly, _colour(rng, patch))
        cv2.fillPoly(mask, _pts(poly), cls + 1, cv2.LINE_8, shift=_SHIFT)
        objects.append({"cls": cls, "poly": poly, "box": np.concatenate([lo, hi - lo])})
    return _finish(img, rng), mask, objects


def generate_scenes(out: str | Path, spec: SceneSpec = SceneSpec(), *, seed: int = 0) -> Path:
    """Write ``spec``'s train and val scenes under ``out`` (COCO layout + masks); returns ``out``."""
    out = Path(out)
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)]
    for split_id, (split, n) in enumerate((("train", spec.n_train), ("val", spec.n_val))):
        images, anns = [], []
        for i in range(n):
            img, mask, objects = render_scene(np.random.default_rng([seed, 7, split_id, i]), spec)
            name = f"scene_{i:05d}.jpg"
            _atomic_write(out / "images" / split / name, _encode(img, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 92)))
            _atomic_write(out / "masks" / split / f"scene_{i:05d}.png", _encode(mask, ".png"))
            images.append({"id": i + 1, "file_name": name, "width": spec.width, "height": spec.height})
            for o in objects:
                x, y, bw, bh = (float(v) for v in o["box"].round(2))
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": o["cls"] + 1,
                             "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
                             "segmentation": [[float(v) for v in o["poly"].ravel()]]})
        coco = {"info": {"description": f"cvapps large scenes ({split})", "seed": seed}, "licenses": [],
                "images": images, "categories": cats, "annotations": anns}
        _atomic_write(out / "annotations" / f"{split}.json", json.dumps(coco).encode())
    return out
