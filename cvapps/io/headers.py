"""Image size from the header alone, for the formats OpenCV decodes that Pillow does not identify.

:func:`header_size` returns ``(width, height)`` for Radiance HDR (``.hdr``/``.pic``), OpenEXR,
PFM, PNM/PAM (``P1``-``P7``, OpenCV's PXM) and Sun Raster, or None when the bytes start with none
of their signatures. Used by :func:`cvapps.io.images.read_image` so the decompression-bomb check
runs before OpenCV allocates pixels, whatever the file's extension says (a 9 MB HDR named
``.png`` can decode to 144 Mpx). Only the first :data:`HEAD_BYTES` bytes are looked at.

:func:`jpeg_png_size` reads the two common formats' headers, so that ``read_image`` opens them
with ``cv2.imdecode`` alone (no PIL open before it).
"""

from __future__ import annotations

import re
import struct

__all__ = ["HEAD_BYTES", "header_size", "jpeg_png_size"]

HEAD_BYTES = 65536  # every header parsed here fits in this many bytes

_HDR_RES = re.compile(rb"^([-+])([XY]) +(\d+) +([-+])([XY]) +(\d+)\s*$")
_PNM_MAGIC = re.compile(rb"^P([1-6])\s")
_PFM_MAGIC = re.compile(rb"^P[Ff]\s")
_EXR_MAGIC = b"\x76\x2f\x31\x01"
_SUN_MAGIC = b"\x59\xa6\x6a\x95"


def _radiance(head: bytes) -> tuple[int, int] | None:
    """``#?RADIANCE`` text header, a blank line, then e.g. ``-Y 480 +X 640`` (height first)."""
    lines = head.split(b"\n")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip():
            continue
        if i + 1 >= len(lines):
            return None
        m = _HDR_RES.match(lines[i + 1].strip())
        if m is None:
            return None
        first, second = int(m.group(3)), int(m.group(6))
        return (second, first) if m.group(2) == b"Y" else (first, second)
    return None


def _tokens(head: bytes, start: int, count: int) -> list[int] | None:
    """``count`` integers after ``start``, skipping whitespace and ``#`` comments (PNM rules)."""
    text = re.sub(rb"#[^\n\r]*", b" ", head[start:])
    parts = text.split()
    if len(parts) < count:
        return None
    try:
        return [int(p) for p in parts[:count]]
    except ValueError:
        return None


def _pam(head: bytes) -> tuple[int, int] | None:
    """``P7`` header: ``WIDTH n`` / ``HEIGHT n`` lines up to ``ENDHDR``."""
    w = re.search(rb"^\s*WIDTH\s+(\d+)", head, re.MULTILINE)
    h = re.search(rb"^\s*HEIGHT\s+(\d+)", head, re.MULTILINE)
    return (int(w.group(1)), int(h.group(1))) if w and h else None


def _exr(head: bytes) -> tuple[int, int] | None:
    """OpenEXR: attributes ``name\\0type\\0size value`` after 8 bytes; size from ``dataWindow``."""
    pos = 8
    while pos < len(head):
        end_name = head.find(b"\0", pos)
        if end_name < 0:
            return None
        name = head[pos:end_name]
        if not name:
            return None  # end of the header without a dataWindow
        end_type = head.find(b"\0", end_name + 1)
        if end_type < 0 or end_type + 5 > len(head):
            return None
        (size,) = struct.unpack_from("<i", head, end_type + 1)
        value = end_type + 5
        if name == b"dataWindow" and size == 16 and value + 16 <= len(head):
            x0, y0, x1, y1 = struct.unpack_from("<4i", head, value)
            return (x1 - x0 + 1, y1 - y0 + 1)
        if size < 0:
            return None
        pos = value + size
    return None


def header_size(head: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the first bytes of an HDR/EXR/PFM/PNM/PAM/Sun Raster file, else None.

    A recognised signature with a header too damaged to read gives ``(0, 0)``: the caller refuses
    it as corrupt rather than letting a decoder guess.
    """
    size: tuple[int, int] | None
    if head.startswith(b"#?"):
        size = _radiance(head)
    elif head.startswith(_EXR_MAGIC):
        size = _exr(head)
    elif head.startswith(_SUN_MAGIC):
        size = struct.unpack_from(">2I", head, 4) if len(head) >= 12 else None
    elif _PFM_MAGIC.match(head):
        size = _pair(_tokens(head, 2, 2))
    elif _PNM_MAGIC.match(head):
        size = _pair(_tokens(head, 2, 2))
    elif head.startswith(b"P7") and head[2:3].isspace():
        size = _pam(head)
    else:
        return None
    return (int(size[0]), int(size[1])) if size else (0, 0)


def _pair(values: list[int] | None) -> tuple[int, int] | None:
    return (values[0], values[1]) if values else None


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C0-CF without DHT C4, JPG C8, DAC CC): they carry the frame size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_png_size(data: bytes) -> tuple[str, tuple[int, int]] | None:
    """``("JPEG" | "PNG", (w, h) as stored)`` from the header of the two common formats, else None.

    The hot path of every folder run: parsing these two headers here instead of a lazy PIL
    ``Image.open`` leaves ``cv2.imdecode`` as the only decoder that touches the file (PIL's open
    costs as much as decoding a 160 px JPEG). Anything unusual returns None, and the general
    probe (PIL) decides.
    """
    if data.startswith(_PNG_MAGIC):
        if data[12:16] != b"IHDR" or len(data) < 24:
            return None
        w, h = struct.unpack_from(">2I", data, 16)
        return "PNG", (w, h)
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers: no length field
            i += 2
            continue
        if marker == 0xDA or marker == 0xD9:  # scan data or end before any frame header
            return None
        length = struct.unpack_from(">H", data, i + 2)[0]
        if marker in _JPEG_SOF:
            if i + 9 > n or length < 7:
                return None
            h, w = struct.unpack_from(">2H", data, i + 5)
            return ("JPEG", (w, h)) if h > 0 else None  # h == 0: size in a later DNL marker
        i += 2 + length
    return None


_JPEG_SOS = b"\xff\xda"  # start of scan: entropy-coded data follows
_JPEG_EOI = b"\xff\xd9"  # end of image
_PNG_IEND = b"IEND"  # last chunk of every complete PNG
_TAIL = 65536  # how far from the end the IEND chunk may sit (tolerates appended trailers)


def jpeg_truncated(data: bytes) -> bool:
    """True when the last scan of a JPEG is not followed by an EOI marker.

    Comparing with the last SOS (instead of looking for FF D9 anywhere) ignores the EOI of an
    embedded EXIF thumbnail; trailing bytes after the real EOI (camera trailers) are tolerated.
    FF D9 / FF DA cannot occur inside entropy-coded data (0xFF there is byte-stuffed).
    """
    sos = data.rfind(_JPEG_SOS)
    return sos < 0 or data.rfind(_JPEG_EOI) < sos


def png_truncated(data: bytes) -> bool:
    """True when a PNG has no IEND chunk near its end (the file was cut short)."""
    return data.find(_PNG_IEND, max(0, len(data) - _TAIL)) < 0
