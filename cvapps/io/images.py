"""Robust image reading and atomic image writing.

:func:`read_image` is the single entry point every task uses to load a still image. It always
returns an HxWx3 BGR uint8 array with the EXIF orientation applied, or raises
:class:`~cvapps.errors.ImageReadError` with a short, user-facing reason so callers can skip the
file and report ``path: reason``.

Decoding goes through ``cv2.imdecode`` (fast, reads the bytes once). PIL is used only to read the
header lazily (format, size, for the decompression-bomb check before any pixels are decoded) and
as a fallback decoder for formats or modes OpenCV rejects.

Behaviour verified against OpenCV 5.0 (see ``tests/test_io_images.py``):

* ``imdecode(..., IMREAD_COLOR)`` applies the EXIF orientation for JPEG, PNG, TIFF and WebP.
* 16-bit PNG/TIFF are reduced to 8 bit by ``>> 8`` (not clipped); grayscale, palette and CMYK
  inputs come back as 3-channel BGR; the alpha channel is dropped (colour kept as stored).
* Truncated JPEG/PNG data make ``imdecode`` return ``None`` (OpenCV 4.x instead returned a
  partially grey image for JPEGs), so truncation is also checked structurally for JPEGs.
"""

from __future__ import annotations

import io
import os
import re
import uuid
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cvapps.errors import CvappsError, ImageReadError
from cvapps.io.guard import check_writable_target

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "read_image",
    "read_image_rgb",
    "write_image",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
)
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}
)

#: Largest accepted image in pixels (PIL's decompression-bomb limit): bigger images are refused
#: from the header alone, before any memory is allocated for the pixels.
MAX_IMAGE_PIXELS = 89_478_485

# We enforce the same limit ourselves and report it as an ImageReadError, so PIL's warning for
# images just above its limit is noise (catch_warnings is not thread-safe, hence a filter).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_JPEG_SOS = b"\xff\xda"  # start of scan: entropy-coded data follows
_JPEG_EOI = b"\xff\xd9"  # end of image
_PNG_IEND = b"IEND"  # last chunk of every complete PNG
_TAIL = 65536  # how far from the end the IEND chunk may sit (tolerates appended trailers)


def _jpeg_truncated(data: bytes) -> bool:
    """True when the last scan of a JPEG is not followed by an EOI marker.

    Comparing with the last SOS (instead of looking for FF D9 anywhere) ignores the EOI of an
    embedded EXIF thumbnail; trailing bytes after the real EOI (camera trailers) are tolerated.
    FF D9 / FF DA cannot occur inside entropy-coded data (0xFF there is byte-stuffed).
    """
    sos = data.rfind(_JPEG_SOS)
    return sos < 0 or data.rfind(_JPEG_EOI) < sos


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


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as HxWx3 BGR uint8 with its EXIF orientation applied.

    The file is read once and never modified. Raises :class:`ImageReadError` with a short reason
    ("file not found", "empty file (0 bytes)", "not an image (unrecognised format)",
    "truncated or corrupt image data", "image too large (W x H pixels > limit)",
    "could not decode").
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "not a file (is a directory)") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from None
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")

    # Header only: Image.open is lazy, so a bomb is refused before its pixels are allocated.
    pil: Image.Image | None
    try:
        pil = _pil_open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # > 2x PIL's limit: only the pixel count is known
        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{m.group(1)} pixels" if m else "pixels"
        raise ImageReadError(path, f"image too large ({size} > {MAX_IMAGE_PIXELS})") from None
    except UnidentifiedImageError:
        pil = None  # maybe a format only OpenCV knows (e.g. PFM); imdecode decides below
    except Exception:  # noqa: BLE001 - malformed headers raise all sorts of errors in plugins
        raise ImageReadError(path, "truncated or corrupt image data") from None
    if pil is not None:
        w, h = pil.size
        if w * h > MAX_IMAGE_PIXELS:
            raise ImageReadError(path, f"image too large ({w} x {h} pixels > {MAX_IMAGE_PIXELS})")
        if w == 0 or h == 0:
            raise ImageReadError(path, "truncated or corrupt image data")
        # OpenCV 4.x decodes a truncated JPEG into a partly grey image without any error.
        # Structural checks also keep the PIL fallback honest if some other library has set
        # the process-wide ImageFile.LOAD_TRUNCATED_IMAGES = True.
        if pil.format in ("JPEG", "MPO") and _jpeg_truncated(data):
            raise ImageReadError(path, "truncated or corrupt image data")
        if pil.format == "PNG" and data.find(_PNG_IEND, max(0, len(data) - _TAIL)) < 0:
            raise ImageReadError(path, "truncated or corrupt image data")

    buf = np.frombuffer(data, dtype=np.uint8)  # zero-copy view of the bytes already read
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is not None and img.size:
        return _as_bgr3(img)

    if pil is None:
        raise ImageReadError(path, "not an image (unrecognised format)")
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
    check_writable_target(p)  # never over an input of the running command
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
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        # Hidden name (leading dot) so folder sources never pick up a half-written temp file;
        # os.open with 0o666 so the final file gets normal umask permissions (mkstemp uses 0600).
        tmp = p.parent / f".{p.name}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(encoded.tobytes())
            os.replace(tmp, p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise CvappsError(f"cannot write {p}: {e.strerror or e}") from None
