"""Robust image reading and atomic image writing.

:func:`read_image` is the single entry point every task uses to load a still image. It always
returns an HxWx3 BGR uint8 array with the EXIF orientation applied, or raises
:class:`~cvapps.errors.ImageReadError` with a short, user-facing reason so callers can skip the
file and report ``path: reason``.

Decoding goes through ``cv2.imdecode`` (fast, reads the bytes once). Before it, the image size is
read from the header for the decompression-bomb check, for every format OpenCV decodes: JPEG and
PNG here (so ``imdecode`` is the only thing that opens them), HDR, EXR, PFM, PNM/PAM and Sun
Raster by :mod:`cvapps.io.headers`, the rest by PIL's lazy ``Image.open``;
bytes neither recognises are refused. PIL is also the fallback decoder for formats or modes
OpenCV rejects. Only regular files up to the size cap (:func:`max_file_bytes`, 256 MiB by
default) are read; FIFOs and devices are refused from ``stat``, before they are opened.

Sizes are ``(w, h)`` throughout (:func:`image_size`); array shapes are ``(h, w)``.

Behaviour verified against OpenCV 5.0 (see ``tests/test_io_images.py``):

* ``imdecode(..., IMREAD_COLOR)`` applies the EXIF orientation for JPEG, PNG, TIFF and WebP.
* 16-bit PNG/TIFF are reduced to 8 bit by ``>> 8`` (not clipped); grayscale, palette and CMYK
  inputs come back as 3-channel BGR; the alpha channel is dropped (colour kept as stored).
* Truncated JPEG/PNG data make ``imdecode`` return ``None`` (OpenCV 4.x instead returned a
  partially grey image for JPEGs), so truncation is also checked structurally for JPEGs.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cvapps.errors import CvappsError, ImageReadError
from cvapps.io.guard import check_writable_target
from cvapps.io.safe_write import write_bytes
from cvapps.io.headers import HEAD_BYTES, header_size, jpeg_png_size, jpeg_truncated, png_truncated
from cvapps.io.input_limits import (  # re-exported: the readers' limits live there
    _MIB,
    ALLOW_LARGE_ENV,
    DEFAULT_MAX_FILE_MB,
    LARGE_IMAGE_PIXELS,
    MAX_FILE_MB_ENV,
    MAX_IMAGE_PIXELS,
    file_size_cap,
    large_images_allowed,
    large_images_on,
    max_file_bytes,
    set_max_file_mb,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_FILE_MB",
    "MAX_FILE_MB_ENV",
    "ALLOW_LARGE_ENV",
    "file_size_cap",
    "image_size",
    "max_file_bytes",
    "read_file_bytes",
    "read_image",
    "read_image_rgb",
    "set_max_file_mb",
    "large_images_allowed",
    "write_image",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
)
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}
)

_EXIF_ORIENTATION = 0x0112
_SIZE_HEAD = 1 << 20  # image_size reads this much: headers (EXIF, ICC) fit in it

# We enforce the same limit ourselves and report it as an ImageReadError, so PIL's warning for
# images just above its limit is noise (catch_warnings is not thread-safe, hence a filter).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale integer/float pixel data to uint8 (16-bit by >> 8, so highlights are not clipped)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        # PIL mode "I" (int32) holds 16-bit data for most real files.
        return (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.bool_):
        return arr.astype(np.uint8) * 255
    arr = np.nan_to_num(arr.astype(np.float32))
    if arr.size and float(arr.max()) <= 1.0:  # float images in [0, 1]
        arr = arr * 255.0
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def _pil_to_bgr(img: Image.Image) -> np.ndarray:
    """Decode a PIL image (fallback path) to HxWx3 BGR uint8 with EXIF orientation applied."""
    img.load()
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1"):
        gray = _to_uint8(np.asarray(img))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    # convert("RGB") handles L, LA, P, PA, RGBA (alpha dropped), CMYK, YCbCr, LAB, HSV.
    rgb = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _as_bgr3(img: np.ndarray) -> np.ndarray:
    """Guard for OpenCV builds that hand back gray/BGRA/16-bit despite IMREAD_COLOR."""
    img = _to_uint8(img)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


def _pil_open(fp: io.BytesIO) -> Image.Image:
    """Pillow's own ``Image.open``: importing ultralytics replaces it with a wrapper that, for a
    file Pillow cannot identify, tries to pip-install pi-heif (network) and raises ImportError when
    offline, which would turn "not an image" into a wrong reason (or a download)."""
    import sys

    original = getattr(sys.modules.get("ultralytics.utils.patches"), "_image_open", None)
    return (original if callable(original) else Image.open)(fp)


def _stat_reason(e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return "file not found"
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EISDIR:
        return "not a file (is a directory)"
    return f"cannot read file ({e.strerror or e})"


def _check_regular(path: object, st: os.stat_result, cap: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(path, "not a file (is a directory)")
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(path, "not a regular file (FIFO, device or socket): not read")
    if st.st_size > cap:
        raise ImageReadError(path, f"file too large ({st.st_size / _MIB:.1f} MiB > cap {cap / _MIB:g} MiB; "
                                   "raise it with --max-file-mb)")


def read_file_bytes(path: str | os.PathLike[str], max_bytes: int | None = None, head: int | None = None) -> bytes:
    """All bytes of a regular file of at most ``max_bytes`` (default :func:`max_file_bytes`), or
    only its first ``head`` bytes.

    FIFOs, devices (a symlink to ``/dev/zero``), sockets and folders are refused from ``stat``
    before they are opened, as are files over the cap, so no read can hang or exhaust memory.
    Raises :class:`ImageReadError` with a short reason.
    """
    cap = max_file_bytes() if max_bytes is None else max_bytes
    try:
        _check_regular(path, os.stat(path), cap)
        # O_NONBLOCK: if the file was swapped for a FIFO after the stat, open and read return
        # at once instead of hanging; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise ImageReadError(path, _stat_reason(e)) from None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            _check_regular(path, st, cap)
            limit = cap + 1 if head is None else min(head, cap + 1)
            # Ask for the size fstat saw (+1 to notice growth), not the cap: a read of n bytes
            # allocates n first, and a 256 MiB buffer per small image cost 50 us per file.
            data = f.read(min(limit, st.st_size + 1))
            if len(data) > st.st_size and len(data) < limit:  # it grew since the stat (or /proc-like)
                data += f.read(limit - len(data))
    except OSError as e:
        raise ImageReadError(path, _stat_reason(e)) from None
    if len(data) > cap:
        raise ImageReadError(path, f"file too large (> cap {cap / _MIB:g} MiB; raise it with --max-file-mb)")
    return data


def _probe(path: object, data: bytes) -> tuple[Image.Image | None, tuple[int, int]]:
    """(lazy PIL image or None, (w, h) as stored) from the header; refuses bombs and unknown formats.

    Every format OpenCV may decode has its size checked here first: Pillow's formats through its
    lazy ``Image.open``, the others (HDR, EXR, PFM, PNM, Sun Raster) by :func:`header_size`;
    bytes neither recognises are refused, never handed to a decoder whose size is unknown.
    """
    pil: Image.Image | None = None
    # Our parsers first: they match the signatures OpenCV's own decoders use for these formats,
    # so a file that some Pillow plugin would also accept cannot slip past with another size.
    found = header_size(data[:HEAD_BYTES])
    if found is not None:
        size = found
    else:
        try:
            pil = _pil_open(io.BytesIO(data))
            size = pil.size
        except Image.DecompressionBombError as e:  # > 2x PIL's limit: only the pixel count is known
            m = re.search(r"\((\d+) pixels\)", str(e))
            count = f"{m.group(1)} pixels" if m else "pixels"
            raise ImageReadError(path, f"image too large ({count} > {MAX_IMAGE_PIXELS})") from None
        except UnidentifiedImageError:
            raise ImageReadError(path, "not an image (unrecognised format)") from None
        except Exception:  # noqa: BLE001 - malformed headers raise all sorts of errors in plugins
            raise ImageReadError(path, "truncated or corrupt image data") from None
    return pil, _checked_size(path, *size)


def _checked_size(path: object, w: int, h: int) -> tuple[int, int]:
    """(w, h) when the pixel count is acceptable; else the bomb / corrupt-header refusal."""
    allowed = large_images_on()
    limit = LARGE_IMAGE_PIXELS if allowed else MAX_IMAGE_PIXELS
    if w * h > limit:
        hint = "" if allowed else "; if the image is real, pass --allow-large (or CVAPPS_ALLOW_LARGE=1)"
        raise ImageReadError(path, f"image too large ({w} x {h} pixels > {limit}){hint}")
    if w <= 0 or h <= 0:
        raise ImageReadError(path, "truncated or corrupt image data")
    return w, h


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`read_image` returns it (EXIF orientation applied),
    from the header only; the same file checks and refusals as :func:`read_image`.

    Convention for the whole package: a *size* is ``(w, h)``; an array *shape* is ``(h, w)``.
    """
    data = read_file_bytes(path, head=_SIZE_HEAD)
    try:
        pil, (w, h) = _probe(path, data)
    except ImageReadError:
        if len(data) < _SIZE_HEAD:
            raise
        pil, (w, h) = _probe(path, read_file_bytes(path))  # a header longer than the head read
    if pil is not None:
        try:
            if pil.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # rotated by 90 degrees
                w, h = h, w
        except Exception:  # noqa: BLE001 - a broken EXIF block: size as stored
            pass
    return int(w), int(h)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as HxWx3 BGR uint8 with its EXIF orientation applied.

    The file is read once and never modified; only regular files under the size cap are read.
    Raises :class:`ImageReadError` with a short reason ("file not found", "empty file (0 bytes)",
    "not a regular file ...", "file too large ...", "symlink loop", "not an image (unrecognised
    format)", "truncated or corrupt image data", "image too large (W x H pixels > limit)",
    "could not decode ...").
    """
    data = read_file_bytes(path)
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")

    # Header only: a bomb is refused before its pixels are allocated. JPEG and PNG headers are
    # parsed here (no PIL open: one decoder per file); other formats go through the PIL probe.
    fast = jpeg_png_size(data)
    pil: Image.Image | None = None
    if fast is not None:
        fmt = fast[0]
        _checked_size(path, *fast[1])
    else:
        pil, _ = _probe(path, data)
        fmt = pil.format if pil is not None else None
    # OpenCV 4.x decodes a truncated JPEG into a partly grey image without any error.
    # Structural checks also keep the PIL fallback honest if some other library has set
    # the process-wide ImageFile.LOAD_TRUNCATED_IMAGES = True.
    if fmt in ("JPEG", "MPO") and jpeg_truncated(data):
        raise ImageReadError(path, "truncated or corrupt image data")
    if fmt == "PNG" and png_truncated(data):
        raise ImageReadError(path, "truncated or corrupt image data")

    buf = np.frombuffer(data, dtype=np.uint8)  # zero-copy view of the bytes already read
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as e:
        lines = str(e).strip().splitlines()
        raise ImageReadError(path, f"could not decode ({(lines[-1] if lines else 'OpenCV error')[:120]})") from None
    except MemoryError:
        raise ImageReadError(path, "could not decode (out of memory)") from None
    if img is not None and img.size:
        return _as_bgr3(img)

    if pil is None and fast is not None:  # a JPEG/PNG OpenCV refused: PIL may still read it
        try:
            pil = _pil_open(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - malformed headers raise all sorts of errors in plugins
            pil = None
    if pil is None:
        raise ImageReadError(path, "truncated or corrupt image data")
    # OpenCV refused it: let PIL tell truncation apart from an unsupported encoding.
    try:
        return _pil_to_bgr(pil)
    except (SyntaxError, EOFError):  # PIL's "broken PNG file" and friends
        raise ImageReadError(path, "truncated or corrupt image data") from None
    except Exception as e:  # noqa: BLE001 - plugins raise OSError/ValueError/struct.error/...
        msg = str(e).lower()
        if any(word in msg for word in ("truncat", "broken", "corrupt", "decoder error")):
            raise ImageReadError(path, "truncated or corrupt image data") from None
        raise ImageReadError(path, "could not decode") from None


def read_image_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Like :func:`read_image` but returns HxWx3 RGB uint8 (contiguous)."""
    return np.ascontiguousarray(read_image(path)[:, :, ::-1])


def write_image(path: str | os.PathLike[str], image_bgr: np.ndarray) -> None:
    """Write a BGR (or gray) image atomically, creating parent folders.

    The image is encoded in memory, written to a hidden temp file in the same folder and moved
    into place with :func:`os.replace`, so readers never see a half-written file. The format is
    chosen from the extension, which must be one of :data:`IMAGE_EXTENSIONS`.
    """
    p = Path(path)
    check_writable_target(p)  # never over an input of the running command (before encoding it)
    ext = p.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise CvappsError(
            f"cannot write {p}: unknown image extension {ext or '(none)'!r} "
            f"(use one of {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    image = np.asarray(image_bgr)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise CvappsError(f"cannot write {p}: expected HxW or HxWx3 image, got shape {image.shape}")
    try:
        ok, encoded = cv2.imencode(ext, image)
    except cv2.error as e:
        raise CvappsError(f"cannot write {p}: {str(e).strip().splitlines()[-1]}") from None
    if not ok:
        raise CvappsError(f"cannot write {p}: encoding to {ext} failed")
    # The one write primitive: a hidden temp file (folder sources never pick it up) made inside
    # OUT through no link, renamed into place; a failed write is one OutputError line.
    write_bytes(p, encoded.tobytes())
