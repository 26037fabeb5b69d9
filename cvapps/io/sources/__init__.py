"""One frame-source abstraction for all tasks: images, folders, globs, lists, videos, webcams, URLs.

``open_source(spec)`` returns a :class:`Source`, an iterable of :class:`~cvapps.structures.Frame`
(HxWx3 BGR uint8). Frames are read by a background thread (:class:`cvapps.threads.Producer`)
into a bounded queue so that decoding overlaps with inference:

* Files (images, folders, videos) never drop frames: the reader blocks while the queue is full.
* Live sources (webcams, and every URL: anything with ``://``) keep only the newest frame by
  default (stale frames are replaced and counted in ``dropped``); ``buffer=True`` keeps every
  frame instead.
* A live source whose reads fail reconnects with exponential backoff (0.5 s doubling, capped at
  4 s) and ends the iteration cleanly once ``reconnect_s`` seconds have passed without a frame;
  FFmpeg's open/read timeouts follow ``reconnect_s``, so a frozen server cannot hold it longer.

Unreadable images (and non-regular files, files over the size cap, symlink loops) are skipped
and recorded in ``Source.skipped`` as ``(path, reason)``; errors in the reader thread are
re-raised in the consumer as :class:`~cvapps.errors.CvappsError`. Use the source as a context
manager (or call ``close()``) to stop the thread and release captures.

``shard=(i, n)`` keeps every n-th item starting at item i (0-based), so n processes can split one
folder or video without coordination; items outside the shard are never decoded (image files
are not opened, video frames are grabbed but not decoded).

A streams file (``.txt``, one URL or webcam index per line) opens every stream at once and
interleaves their frames (:mod:`cvapps.io.sources.multi`), for one batched model over many cameras.

Modules: ``base`` (Source, shards), ``files`` (still images), ``video`` (video files),
``live`` (streams, webcams), ``multi`` (many streams as one); :func:`open_source` picks one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from cvapps.errors import CvappsError
from cvapps.io.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from cvapps.io.sources.base import Capture, CaptureFactory, Source, check_shard, parse_shard
from cvapps.io.sources.files import ImageFilesSource, expand_paths, glob_images, iter_image_files, txt_lines
from cvapps.io.sources.live import StreamSource, WebcamSource, is_url, redact_url
from cvapps.io.sources.multi import MultiSource, StreamSpec, is_streams_file, read_streams_file
from cvapps.io.sources.video import VideoSource

__all__ = [
    "local_inputs",
    "STREAM_SCHEMES",
    "Capture",
    "CaptureFactory",
    "Source",
    "ImageFilesSource",
    "VideoSource",
    "StreamSource",
    "WebcamSource",
    "MultiSource",
    "StreamSpec",
    "is_streams_file",
    "read_streams_file",
    "open_source",
    "is_url",
    "iter_image_files",
    "parse_shard",
    "redact_url",
]

#: Common stream schemes (documentation; any ``scheme://`` is treated as a stream).
STREAM_SCHEMES: tuple[str, ...] = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://")

_GLOB_MAGIC = re.compile(r"[*?[]")


def open_source(
    spec: str | os.PathLike[str] | int | list[str | os.PathLike[str]],
    *,
    vid_stride: int = 1,
    buffer: bool | None = None,
    reconnect_s: float = 10.0,
    queue_size: int = 64,
    shard: tuple[int, int] | str | None = None,
) -> Source:
    """Open any input as a :class:`Source` of frames.

    ``spec``: an image file; a folder (recursive, sorted, streamed); a glob (``"data/**/*.jpg"``);
    a ``.txt`` file with one path per line (relative to the txt's folder; blank lines and ``#``
    comments skipped); a list of paths; a video file (by extension); a webcam index (``0`` or
    ``"0"``); or a URL (anything with ``://``: rtsp, http, udp...), always read as a live stream
    (reconnect, keep-newest, timeouts), even ``http://host/clip.mp4``; or a streams file (a
    ``.txt`` with any URL line, or only webcam indexes; another line in it is a one-line error):
    all its streams interleaved
    (:class:`~cvapps.io.sources.multi.MultiSource`). ``buffer=None`` means
    keep-newest for live sources; files never drop frames. ``shard``: ``(i, n)`` or ``"i/n"``,
    keep items i, i+n, ... (files, or video frames after ``vid_stride``).
    """
    shard = parse_shard(shard) if isinstance(shard, str) else check_shard(shard)
    if isinstance(vid_stride, bool) or not isinstance(vid_stride, int) or vid_stride < 1:
        raise CvappsError(f"vid_stride must be an integer >= 1, got {vid_stride!r}")
    if queue_size < 1:
        raise CvappsError(f"queue_size must be >= 1, got {queue_size!r}")
    if reconnect_s < 0:
        raise CvappsError(f"reconnect_s must be >= 0, got {reconnect_s!r}")
    live_kwargs: dict[str, Any] = dict(
        vid_stride=vid_stride, buffer=buffer, reconnect_s=reconnect_s, queue_size=queue_size, shard=shard
    )
    files_kwargs: dict[str, Any] = dict(queue_size=queue_size, shard=shard)

    if isinstance(spec, bool):  # bool is an int subclass; True is not "webcam 1"
        raise CvappsError(f"invalid source: {spec!r}")
    if isinstance(spec, int):
        return WebcamSource(spec, **live_kwargs)
    if isinstance(spec, (list, tuple)):
        items = [os.fspath(p) for p in spec]
        return ImageFilesSource(f"list[{len(items)}]", lambda skip: expand_paths(iter(items), skip), **files_kwargs)
    if not isinstance(spec, (str, os.PathLike)):
        raise CvappsError(f"invalid source: {spec!r}")

    s = os.fspath(spec)
    if not s.strip():
        raise CvappsError("source not found: '' (empty source)")
    if is_url(s):
        return StreamSource(s.strip(), **live_kwargs)

    local = os.path.expanduser(s)
    if re.fullmatch(r"\d+", s.strip()) and not os.path.exists(local):
        return WebcamSource(int(s.strip()), **live_kwargs)
    if os.path.isdir(local):
        return ImageFilesSource(s, lambda skip: iter_image_files(local, skip), **files_kwargs)
    if os.path.exists(local):
        suffix = os.path.splitext(local)[1].lower()
        if suffix == ".txt" and is_streams_file(local):
            return MultiSource(read_streams_file(local), name=s, **live_kwargs)
        if suffix == ".txt":
            txt = Path(local)
            if not txt.is_file():
                raise CvappsError(f"cannot read list {s}: not a regular file")
            return ImageFilesSource(s, lambda skip: expand_paths(txt_lines(txt), skip), **files_kwargs)
        if suffix in VIDEO_EXTENSIONS:
            if not os.path.isfile(local):
                raise CvappsError(f"cannot open video: {s} (not a regular file)")
            return VideoSource(local, vid_stride=vid_stride, **files_kwargs)
        if suffix in IMAGE_EXTENSIONS:  # read_image refuses (and reports) non-regular files
            return ImageFilesSource(s, lambda skip: iter([local]), **files_kwargs)
        raise CvappsError(
            f"unsupported source: {s} (expected an image, video, folder, .txt list, glob, "
            "webcam index or stream URL)"
        )
    if _GLOB_MAGIC.search(s):
        if next(glob_images(local), None) is None:
            raise CvappsError(f"source not found: {s} (no images match)")
        return ImageFilesSource(s, lambda skip: glob_images(local), **files_kwargs)
    raise CvappsError(f"source not found: {s}")


def local_inputs(spec: Any) -> tuple[list[str], list[str]]:
    """``(files, folders)`` that ``spec`` (as :func:`open_source` takes it) reads from the local disk:
    what outputs must never replace (see :mod:`cvapps.io.guard`). Streams and webcams read none."""
    if isinstance(spec, (list, tuple)):
        entries = [os.fspath(p) for p in spec]
    elif isinstance(spec, bool) or not isinstance(spec, (str, os.PathLike)):
        return [], []
    else:
        s = os.path.expanduser(os.fspath(spec).strip())
        if is_streams_file(s):
            return [s], []  # the list itself; its streams read nothing local
        if not s or is_url(s) or (re.fullmatch(r"\d+", s) and not os.path.exists(s)):
            return [], []
        entries = [s] if os.path.exists(s) else list(glob_images(s)) if _GLOB_MAGIC.search(s) else []
        if os.path.isfile(s) and s.lower().endswith(".txt"):
            try:
                entries += list(txt_lines(Path(s)))
            except (OSError, UnicodeDecodeError):
                pass  # open_source reports the unreadable list itself
    folders = {e for e in entries if os.path.isdir(e)}
    return [e for e in entries if e not in folders], sorted(folders)
