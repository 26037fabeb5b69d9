"""A generated corpus of hostile inputs: files that hang, blow up memory or run code if read naively.

``make_hostile_images(folder)`` writes image-like files next to two good images and returns
``{name: expected_readable}``; ``make_evil_pickle(path, marker)`` writes a ``.pt`` file that would
create ``marker`` if anything unpickled it; ``input_state(folder)`` describes every entry of a
folder without following links or opening FIFOs, so a test can check nothing was altered.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

#: Width and height in the header of the Radiance HDR bomb: 144 Mpx, over the 89 Mpx limit.
HDR_SIZE = 12000
#: Size of the sparse file that stands for a 2.5 GB upload (no disk space is used).
HUGE_BYTES = 2_500_000_000


def radiance_hdr_bomb(size: int = HDR_SIZE) -> bytes:
    """A valid Radiance HDR (``.hdr``) image of size x size pixels in ~9 MB (run-length encoded).

    Each scanline is the new-style RLE: ``2 2 hi lo`` then, per RGBE component, runs of at most
    127 equal bytes (count byte 128 + n, then the value).
    """
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {size} +X {size}\n".encode("ascii")
    runs, rest = divmod(size, 127)
    component = bytes([128 + 127, 100]) * runs + (bytes([128 + rest, 100]) if rest else b"")
    line = bytes([2, 2, size >> 8, size & 0xFF]) + component * 4
    return header + line * size


class _Evil:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def make_evil_pickle(path: Path, marker: Path) -> Path:
    """A torch-style ``.pt`` whose pickle mentions "ultralytics" and runs code when fully unpickled."""
    import torch

    torch.save({"note": "ultralytics", "model": _Evil(str(marker)), "train_args": {}}, path,
               pickle_protocol=pickle.DEFAULT_PROTOCOL)
    return path


def make_hostile_images(folder: Path) -> dict[str, bool]:
    """Write the hostile image corpus into ``folder``; ``{file name: expected readable}``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(good).save(folder / "good.jpg", quality=90)
    (folder / "sub").mkdir(exist_ok=True)
    Image.fromarray(good[:, ::-1]).save(folder / "sub" / "good2.png")
    # A name that is not valid UTF-8 (bytes path): read and reported, never lost.
    Image.fromarray(good).save(os.fsencode(folder) + b"/bad\xffname.png", format="PNG")
    os.mkfifo(folder / "fifo.jpg")  # opening it for reading would block forever
    os.symlink("/dev/zero", folder / "zero.jpg")  # endless bytes
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")  # a symlink loop
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    with open(folder / "huge.jpg", "wb") as fh:  # sparse: 2.5 GB to stat, no disk used
        fh.write(b"\xff\xd8\xff\xe0")
        fh.truncate(HUGE_BYTES)
    (folder / "hdr_bomb.png").write_bytes(radiance_hdr_bomb())  # Radiance HDR under a .png name
    return {"good.jpg": True, "sub/good2.png": True, "bad\udcffname.png": True, "fifo.jpg": False,
            "zero.jpg": False, "loop_a.jpg": False, "loop_b.jpg": False, "huge.jpg": False,
            "hdr_bomb.png": False}


def input_state(folder: Path) -> dict[str, str]:
    """relative path -> what it is: link target, "fifo", or size + sha256 of the first 16 MiB.

    Never follows a link and never opens a FIFO, so it is safe on the hostile corpus itself.
    """
    state = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            st = os.lstat(path)
            if os.path.islink(path):
                state[rel] = "link->" + os.readlink(path)
            elif not os.path.isfile(path) and not os.path.isdir(path):
                state[rel] = f"special {st.st_mode:o}"
            elif os.path.isdir(path):
                state[rel] = "dir"
            else:
                with open(path, "rb") as fh:
                    state[rel] = f"{st.st_size} {hashlib.sha256(fh.read(16 << 20)).hexdigest()}"
    return state
