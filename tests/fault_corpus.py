"""A small folder of good and broken images for tests of every reader (images, sources, pipelines).

``make_fault_corpus(folder)`` writes the files and returns ``{relative_path: expected_readable}``;
:data:`EXPECTED_REASONS` holds a substring of the skip reason expected for each unreadable file,
and :func:`exif_expected` the pixel layout each EXIF orientation must decode to.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

#: Substring of ``ImageReadError.reason`` for each unreadable corpus file.
EXPECTED_REASONS: dict[str, str] = {
    "truncated.jpg": "truncated or corrupt image data",
    "truncated.png": "truncated or corrupt image data",
    "empty.jpg": "empty file (0 bytes)",
    "text.jpg": "not an image (unrecognised format)",
    "bomb.png": "image too large (10000 x 9000 pixels > 89478485)",
}

#: Size of the bomb's header; 90,000,000 pixels is just above PIL's limit of 89,478,485.
BOMB_SIZE = (10000, 9000)

EXIF_ORIENTATION_TAG = 0x0112


def exif_base() -> np.ndarray:
    """An asymmetric 24x40 RGB image of 8x8 solid blocks (aligned to JPEG blocks: near-lossless).

    Every orientation of it is distinguishable: the three marked corners differ in colour and
    the image is not square.
    """
    blocks = np.full((3, 5, 3), 40, np.uint8)
    blocks[0, 0] = (255, 0, 0)  # top-left red
    blocks[0, 4] = (0, 255, 0)  # top-right green
    blocks[2, 0] = (0, 0, 255)  # bottom-left blue
    blocks[1, 2] = (255, 255, 255)
    return np.kron(blocks, np.ones((8, 8, 1), np.uint8))


def exif_expected(orientation: int, rgb: np.ndarray) -> np.ndarray:
    """How a stored image with EXIF ``orientation`` must look once displayed (EXIF 2.3 table)."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirror horizontal
        3: lambda a: a[::-1, ::-1],  # rotate 180
        4: lambda a: a[::-1],  # mirror vertical
        5: lambda a: a.transpose(1, 0, 2),  # transpose (main diagonal)
        6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
        7: lambda a: np.rot90(a, -1)[::-1],  # transverse (anti-diagonal)
        8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
    }
    return np.ascontiguousarray(ops[orientation](rgb))


def _noise_rgb(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth noise: compresses poorly enough that cutting the file in half cuts pixel data."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (5, 5), 1.5)


def sixteen_bit_values() -> np.ndarray:
    """16x256 uint16 gray ramp spanning 0..65535 (including both ends)."""
    return np.linspace(0, 65535, 16 * 256).round().astype(np.uint16).reshape(16, 256)


def make_fault_corpus(folder: str | os.PathLike[str]) -> dict[str, bool]:
    """Write the corpus into ``folder`` and return ``{relative posix path: expected readable}``."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, bool] = {}

    def save(name: str, readable: bool) -> Path:
        expected[name] = readable
        return root / name

    good = _noise_rgb(96, 128, 0)
    Image.fromarray(good).save(save("good.jpg", True), quality=90)
    Image.fromarray(good).save(save("good.png", True))
    Image.fromarray(good[:, :, 0]).save(save("gray.png", True))
    rgba = np.dstack([good, np.tile(np.arange(128, dtype=np.uint8) * 2, (96, 1))])
    Image.fromarray(rgba, "RGBA").save(save("rgba.png", True))
    Image.fromarray(good).convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(
        save("palette.png", True)
    )
    cv2.imwrite(str(save("sixteen_bit.png", True)), sixteen_bit_values())
    Image.fromarray(good).convert("CMYK").save(save("cmyk.jpg", True), quality=95)

    base = exif_base()
    for o in range(1, 9):
        img = Image.fromarray(base)
        exif = img.getexif()
        exif[EXIF_ORIENTATION_TAG] = o
        # 4:4:4 at quality 100 keeps the solid 8x8 blocks almost exact.
        img.save(save(f"exif_{o}.jpg", True), exif=exif.tobytes(), quality=100, subsampling=0)

    Image.fromarray(np.array([[[10, 200, 30]]], np.uint8)).save(save("one_pixel.png", True))

    jpeg = (root / "good.jpg").read_bytes()
    save("truncated.jpg", False).write_bytes(jpeg[: len(jpeg) // 2])
    png = (root / "good.png").read_bytes()
    save("truncated.png", False).write_bytes(png[: len(png) // 2])
    save("empty.jpg", False).write_bytes(b"")
    save("text.jpg", False).write_text("this is not a picture\n", encoding="utf-8")
    # 1-bit all-black PNG: 90 Mpx in ~11 KB, written in ~0.25 s.
    Image.new("1", BOMB_SIZE).save(save("bomb.png", False), optimize=True)

    (root / "nested").mkdir(exist_ok=True)
    Image.fromarray(_noise_rgb(32, 48, 1)).save(save("nested/inner.jpg", True), quality=90)
    return expected


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (and every folder, as "dir"): the folder's full state."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out
