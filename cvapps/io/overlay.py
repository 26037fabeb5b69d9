"""Colour overlays of class-index masks on BGR images, with one fixed palette for every run."""

from __future__ import annotations

import cv2
import numpy as np


def _make_palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 BGR: the PASCAL VOC bit-interleaving palette (class 0 black, 1 red-ish, ...),
    fixed so a class has the same colour in every image, video and run."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (b, g, r)
    return palette


PALETTE = _make_palette()


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """HxW class indices (uint8) -> HxWx3 BGR colours from :data:`PALETTE`."""
    return PALETTE[mask.astype(np.uint8)]


def overlay_mask(image_bgr: np.ndarray, mask: np.ndarray, alpha: float = 0.5, background: int = 0,
                 class_names: list[str] | None = None) -> np.ndarray:
    """Blend the class colours over ``image_bgr`` (HxWx3 uint8) where ``mask`` (HxW) is not background;
    class outlines are drawn at full colour, and with ``class_names`` a legend of the classes present.
    Returns a new image; the input is not modified."""
    if mask.shape != image_bgr.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image_bgr.shape[:2]} differ in size")
    out = image_bgr.copy()
    fg = mask != background
    if fg.any():
        colours = colorize_mask(mask)
        out[fg] = (out[fg].astype(np.float32) * (1 - alpha) + colours[fg].astype(np.float32) * alpha).round().astype(np.uint8)
    present = [int(c) for c in np.unique(mask) if c != background]
    for c in present:
        contours, _ = cv2.findContours((mask == c).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(v) for v in PALETTE[c]), 1, cv2.LINE_AA)
    if class_names:
        scale = max(0.35, min(out.shape[:2]) / 600)
        y = int(18 * scale / 0.5)
        for c in present:
            name = class_names[c] if c < len(class_names) else str(c)
            colour = tuple(int(v) for v in PALETTE[c])
            (tw, th), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            cv2.rectangle(out, (4, y - th - 3), (8 + tw, y + 3), colour, -1)
            text = (0, 0, 0) if int(colour[1]) + int(colour[2]) > 200 else (255, 255, 255)
            cv2.putText(out, name, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, text, 1, cv2.LINE_AA)
            y += th + 8
    return out
