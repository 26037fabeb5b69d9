"""Class-index mask PNGs: one single-channel image per input, pixel = class index (0 background,
255 ignore), 8-bit (16-bit grey is read too). The layout training reads (``ROOT/masks/<split>/<stem>.png``)
and ``cvapps segment`` writes, so predictions can be corrected and trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cvapps.errors import CvappsError, ImageReadError
from cvapps.io.images import write_image

IGNORE_INDEX = 255


def read_mask(path: str | Path) -> np.ndarray:
    """Single-channel class-index mask (PNG, 8 or 16 bit, grey or palette) -> HxW array.

    PIL keeps palette indices (OpenCV would expand a palette PNG to colours). Raises
    ImageReadError with a short reason. Only regular files are read (a FIFO would block).
    """
    if Path(path).exists() and not Path(path).is_file():
        raise ImageReadError(path, "not a regular file")
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
        return (f"mask values {shown} >= class count {num_classes} "
                f"(only 0..{num_classes - 1} and {IGNORE_INDEX} allowed)")
    return None


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write an HxW class-index mask (values 0..254 and 255) as an 8-bit PNG, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or (mask.size and (mask.min() < 0 or mask.max() > 255)):
        raise CvappsError(f"cannot write {path}: a mask is HxW with values 0..255, got shape {mask.shape}")
    if Path(path).suffix.lower() != ".png":
        raise CvappsError(f"cannot write {path}: masks are PNG files")
    write_image(path, mask.astype(np.uint8))
