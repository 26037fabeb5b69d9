"""Small random images on disk, for tests that only need something to predict on."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_images(folder: Path, n: int = 3, size: tuple[int, int] = (48, 64)) -> Path:
    """``n`` noise images of ``size`` (h, w) with a white disc, ``img<i>.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        cv2.circle(img, (size[1] // 2, size[0] // 2), min(size) // 3, (255, 255, 255), -1)
        cv2.imwrite(str(folder / f"img{i}.png"), img)
    return folder
