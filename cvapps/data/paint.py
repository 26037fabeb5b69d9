"""The painters of the generated datasets (shapes, scenes, occlusion videos): backgrounds, shapes as
polygons in COCO pixel coordinates, drawn soft-edged on images and hard-edged into masks, and
their boxes. One look for every generated image; the generators import them from here.

cv2 puts pixel centres on integers while COCO's pixel i covers [i, i+1), so polygons are shifted by
-0.5 when drawn (:func:`_pts`), with 1/16-pixel precision (``_SHIFT``).
"""

from __future__ import annotations

import cv2
import numpy as np

from cvapps.errors import CvappsError

_SHIFT = 4  # cv2 fixed-point bits: polygons are drawn with 1/16-pixel precision


def _encode(img: np.ndarray, ext: str, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:
        raise CvappsError(f"could not encode a {ext} image")
    return buf.tobytes()


def _texture(rng: np.random.Generator, h: int, w: int, lines: bool = True) -> np.ndarray:
    """Muted background (float32 HxWx3): linear gradient + smooth blobs + a few faint lines."""
    base = rng.uniform(70, 190) + rng.uniform(-25, 25, 3)  # greyish, so saturated shapes stand out
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(ang) * xx + np.sin(ang) * yy
    img = base.astype(np.float32) + ramp[..., None] * rng.uniform(-45, 45, 3).astype(np.float32)
    blobs = rng.normal(0, 14, (4, 4, 3)).astype(np.float32)
    img += cv2.resize(blobs, (w, h), interpolation=cv2.INTER_CUBIC)
    if lines:
        layer = np.zeros_like(img)
        for _ in range(int(rng.integers(2, 6))):
            p1, p2 = rng.uniform(0, [w, h], (2, 2)).astype(int)
            col = tuple(float(v) for v in rng.uniform(-22, 22, 3))
            cv2.line(layer, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), col, 1, cv2.LINE_AA)
        img += layer
    return img


def _finish(img: np.ndarray, rng: np.random.Generator, sigma: float = 3.0) -> np.ndarray:
    """Add low-amplitude sensor noise and clip to uint8."""
    noise = rng.normal(0, sigma, img.shape).astype(np.float32)
    return np.clip(img.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)


def _colour(rng: np.random.Generator, bg: np.ndarray) -> tuple[int, int, int]:
    """A saturated BGR colour far (L2 > 90) from the background colour ``bg``."""
    best, best_d = None, -1.0
    for _ in range(20):
        hsv = np.array([[[rng.integers(0, 180), rng.integers(170, 256), rng.integers(140, 256)]]], np.uint8)
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        d = float(np.linalg.norm(bgr - bg))
        if d > best_d:
            best, best_d = bgr, d
        if d > 90:
            break
    return tuple(int(v) for v in best)


def _polygon(cls: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Vertices (N, 2) in COCO coordinates; every shape fits in the box [cx-r, cx+r] x [cy-r, cy+r]."""
    if cls == 0:  # 32-gon: the COCO polygon of a circle
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    elif cls == 1:  # axis-aligned square of side 2r (its box is the circle's box)
        return np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
    else:  # equilateral triangle, random rotation
        t = rot + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _pts(poly: np.ndarray) -> list[np.ndarray]:
    return [np.round((poly - 0.5) * (1 << _SHIFT)).astype(np.int32)]


def _draw(img: np.ndarray, poly: np.ndarray, colour: tuple[int, int, int]) -> None:
    cv2.fillPoly(img, _pts(poly), colour, cv2.LINE_AA, shift=_SHIFT)  # soft edges on the image only


def _raster(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, _pts(poly), 1, cv2.LINE_8, shift=_SHIFT)  # hard edges: crisp masks
    return m


def _box(poly: np.ndarray) -> np.ndarray:
    lo, hi = poly.min(0), poly.max(0)
    return np.concatenate([lo, hi - lo])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)
