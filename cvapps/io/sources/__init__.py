"""One frame-source abstraction for all tasks: images, folders, globs, lists, videos, webcams, URLs.

``open_source(source, options)`` returns a :class:`Source`, an iterable of :class:`~cvapps.structures.Frame`
(HxWx3 BGR uint8). Frames are read by a background thread (:class:`cvapps.threads.Producer`)
into a bounded queue so that decoding overlaps with inference:

* Files (images, folders, videos) never drop frames: the reader blocks while the queue is full.
* Live sources (webcams, and every URL: anything with ``://``) keep only the newest frame by
  default (stale frames are replaced and counted in ``dropped``); ``SourceOptions(buffer=True)`` keeps every
  frame instead.
* A live source whose reads fail reconnects with exponential backoff (0.5 s doubling, capped at
  4 s) and ends the iteration cleanly once ``reconnect_s`` seconds have passed without a frame;
  FFmpeg's open/read timeouts follow ``reconnect_s``, so a frozen server cannot hold it longer.

Unreadable images (and non-regular files, files over the size cap, symlink loops) are skipped
and recorded in ``Source.skipped`` as ``(path, reason)``; errors in the reader thread are
re-raised in the consumer as :class:`~cvapps.errors.CvappsError`. Use the source as a context
manager (or call ``close()``) to stop the thread and release captures.

``SourceOptions(shard=(i, n))`` keeps every n-th item starting at item i (0-based), so n processes can split one
folder or video without coordination; items outside the shard are never decoded (image files
are not opened, video frames are grabbed but not decoded).

A streams file (``.txt``, one URL or webcam index per line) opens every stream at once and
interleaves their frames (:mod:`cvapps.io.sources.multi`), for one batched model over many cameras.

What a source string is gets decided once, by :func:`describe_source` (a :class:`SourceSpec`), and
how it is read travels as one :class:`SourceOptions`; :func:`open_source` (and Ray's planner) take
both. Video and stream frames carry their ``stream`` and ``frame_index``
(:class:`~cvapps.structures.Frame`).

Modules: ``spec`` (SourceSpec, describe_source), ``options`` (SourceOptions), ``base`` (Source, shards), ``files``
(still images), ``video`` (video files), ``live`` (streams, webcams), ``multi`` (many streams as
one); :func:`open_source` picks one.
"""

from __future__ import annotations

import os

from cvapps.io.sources.base import (
    Capture,
    CaptureFactory,
    Source,
    check_shard,
    parse_shard,
)
from cvapps.io.sources.files import ImageFilesSource, iter_image_files
from cvapps.io.sources.live import StreamSource, WebcamSource, is_url, redact_url
from cvapps.io.sources.multi import (
    MultiSource,
    StreamSpec,
    is_streams_file,
    read_streams_file,
)
from cvapps.io.sources.options import SourceOptions
from cvapps.io.sources.spec import (
    SOURCE_KINDS,
    SourceSpec,
    describe_source,
    local_inputs,
    source_paths,
)
from cvapps.io.sources.video import VideoSource

__all__ = [
    "SOURCE_KINDS",
    "STREAM_SCHEMES",
    "Capture",
    "CaptureFactory",
    "ImageFilesSource",
    "MultiSource",
    "Source",
    "SourceOptions",
    "SourceSpec",
    "StreamSource",
    "StreamSpec",
    "VideoSource",
    "WebcamSource",
    "check_shard",
    "describe_source",
    "is_streams_file",
    "is_url",
    "iter_image_files",
    "local_inputs",
    "open_source",
    "parse_shard",
    "read_streams_file",
    "redact_url",
    "source_paths",
]

#: Common stream schemes (documentation; any ``scheme://`` is treated as a stream).
STREAM_SCHEMES: tuple[str, ...] = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://")


def open_source(source: SourceSpec | str | os.PathLike[str] | int | list[str | os.PathLike[str]],
                options: SourceOptions | None = None) -> Source:
    """Open any input as a :class:`Source` of frames.

    ``source``: a :class:`SourceSpec`, or anything :func:`describe_source` takes: an image file; a
    folder (recursive, sorted, streamed); a glob (``"data/**/*.jpg"``); a ``.txt`` file with one
    path per line (relative to the txt's folder; blank lines and ``#`` comments skipped); a list of
    paths; a video file (by extension); a webcam index (``0`` or ``"0"``); or a URL (anything with
    ``://``: rtsp, http, udp...), always read as a live stream (reconnect, keep-newest, timeouts),
    even ``http://host/clip.mp4``; or a streams file (a ``.txt`` with any URL line, or only webcam
    indexes; another line in it is a one-line error): all its streams interleaved
    (:class:`~cvapps.io.sources.multi.MultiSource`). ``options``: stride, shard, buffering,
    reconnection, queue size (:class:`SourceOptions`; default: its defaults).
    """
    spec = describe_source(source)
    opts = options if options is not None else SourceOptions()
    shard = opts.shard if isinstance(opts.shard, tuple) else None
    if spec.kind == "webcam":
        assert spec.webcam is not None
        return WebcamSource(spec.webcam, opts)
    if spec.kind == "stream":
        return StreamSource(spec.url, opts)
    if spec.kind == "streams":
        return MultiSource(list(spec.streams), opts, name=spec.text)
    if spec.kind == "video":
        return VideoSource(spec.paths[0], vid_stride=opts.vid_stride, queue_size=opts.queue_size, shard=shard)
    return ImageFilesSource(spec.text, lambda skip: source_paths(spec, skip), queue_size=opts.queue_size,
                            shard=shard)
