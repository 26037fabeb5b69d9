"""The limits every image read honours: a file-size cap and a pixel-count cap (decompression bombs).

The CLI options (``--max-file-mb``, ``--allow-large``) win over the environment
(``CVAPPS_MAX_FILE_MB``, ``CVAPPS_ALLOW_LARGE=1``), which wins over the defaults. Read by
:mod:`cvapps.io.images` and re-exported there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from cvapps.errors import CvappsError

#: Largest accepted image in pixels (PIL's decompression-bomb limit): bigger images are refused
#: from the header alone, before any memory is allocated for the pixels.
MAX_IMAGE_PIXELS = 89_478_485
#: With ``--allow-large`` (or ``CVAPPS_ALLOW_LARGE=1``): up to OpenCV's own decoder limit (2^30 pixels),
#: for a user who knows the image is real (a 10,000 x 10,000 aerial scene is 100 M pixels).
LARGE_IMAGE_PIXELS = 1 << 30
ALLOW_LARGE_ENV = "CVAPPS_ALLOW_LARGE"
_allow_large: bool | None = None  # large_images_allowed() (the CLI option) wins over the environment

#: Files larger than this (MiB) are skipped before they are opened; ``--max-file-mb`` or the
#: environment variable below change it.
DEFAULT_MAX_FILE_MB = 256
MAX_FILE_MB_ENV = "CVAPPS_MAX_FILE_MB"
_MIB = 1 << 20
_max_file_mb: float | None = None  # set_max_file_mb() (the CLI option) wins over the environment


def max_file_bytes() -> int:
    """The file-size cap in bytes: :func:`set_max_file_mb`, else ``$CVAPPS_MAX_FILE_MB``, else
    :data:`DEFAULT_MAX_FILE_MB` (MiB)."""
    mb: float | str | None = _max_file_mb
    if mb is None:
        mb = os.environ.get(MAX_FILE_MB_ENV) or DEFAULT_MAX_FILE_MB
    try:
        value = float(mb)
    except ValueError:
        raise CvappsError(f"{MAX_FILE_MB_ENV} must be a number of MiB, got {str(mb)[:40]!r}") from None
    if not value > 0:
        raise CvappsError(f"the file size cap must be > 0 MiB, got {value:g}")
    return int(value * _MIB)


def set_max_file_mb(mb: float | None) -> None:
    """Set the file-size cap (MiB) for this process (``--max-file-mb``); None: back to the default."""
    global _max_file_mb
    if mb is not None and not mb > 0:
        raise CvappsError(f"--max-file-mb must be > 0, got {mb:g}")
    _max_file_mb = mb


@contextlib.contextmanager
def file_size_cap(mb: float | None) -> Iterator[None]:
    """Within the block, the file-size cap is ``mb`` MiB (None: leave it as it is)."""
    global _max_file_mb
    previous = _max_file_mb
    if mb is not None:
        set_max_file_mb(mb)
    try:
        yield
    finally:
        _max_file_mb = previous


@contextlib.contextmanager
def large_images_allowed(allowed: bool | None) -> Iterator[None]:
    """Within the block, images up to :data:`LARGE_IMAGE_PIXELS` are read (``--allow-large``; None:
    leave it as it is)."""
    global _allow_large
    previous = _allow_large
    if allowed is not None:
        _allow_large = bool(allowed)
    try:
        yield
    finally:
        _allow_large = previous


def large_images_on() -> bool:
    """Whether images up to :data:`LARGE_IMAGE_PIXELS` are read: :func:`large_images_allowed`, else
    ``$CVAPPS_ALLOW_LARGE=1``."""
    return _allow_large if _allow_large is not None else os.environ.get(ALLOW_LARGE_ENV, "") == "1"
