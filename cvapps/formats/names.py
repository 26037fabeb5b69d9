"""Names of images and video frames in every output: one rule for each, used by all writers.

* A video or stream frame is named ``<stream>#frame=<index, 6 digits>`` (:func:`frame_name`): a
  display name only, never parsed back (a frame carries its ``stream`` and ``frame_index``, see
  :class:`FrameRef`); in output files a video file's frame keeps only the file name
  (``clip.mp4#frame=000123``), a stream URL is kept whole.
* A per-frame output file (annotated image, overlay, mask) goes to ``<relative path>`` for images
  under the source folder (the input tree is mirrored), ``<file name>`` for other images and
  ``<video stem>_<index>`` for video frames (``<stream stem>_<index>`` for URLs, see
  :func:`stream_stem`) (:func:`output_relpath`).
* A name that is not valid UTF-8 (a file name of undecodable bytes, held by Python as lone
  surrogates) is written with those bytes backslash-escaped (``bad\\xffname.png``) so text writers
  never fail on it (:func:`safe_name`); COCO files keep it reversibly instead (see
  :mod:`cvapps.io.sinks.coco`).
* A class name must be single-line printable text (:func:`check_class_names`): one name per line
  (``tracks/labels.txt``, CVAT and YOLO name lists) and one per CSV cell only stay aligned then.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlsplit

from cvapps.errors import DataError, shorten

FRAME_TAG = "#frame="


class FrameRef(Protocol):
    """What names a frame (:class:`~cvapps.structures.Frame`, :class:`~cvapps.results.Result`): its
    display name (``source``), the video/stream it comes from and its number there (None: a still image)."""

    @property
    def source(self) -> str: ...

    @property
    def stream(self) -> str: ...

    @property
    def frame_index(self) -> int | None: ...


def frame_name(video: str, index: int) -> str:
    """``frame_name("clip.mp4", 7) == "clip.mp4#frame=000007"``."""
    return f"{video}{FRAME_TAG}{int(index):06d}"


def video_of(frame: FrameRef | str) -> tuple[str, int] | None:
    """``(stream, frame index)`` of a video or stream frame; None for a still image (a plain string
    is a still image's path)."""
    if isinstance(frame, str) or frame.frame_index is None:
        return None
    return frame.stream, int(frame.frame_index)


def _path_of(frame: FrameRef | str) -> str:
    return frame if isinstance(frame, str) else frame.source


def safe_name(name: str) -> str:
    """``name`` with undecodable file-name bytes backslash-escaped (always encodable as UTF-8)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace") if _has_surrogates(name) else name


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


# Control characters (C0, DEL, C1 incl. NEL), Unicode line/paragraph separators and lone surrogates
# (undecodable bytes): each would split a line, or not encode, in a file of one name per line.
_UNSAFE_IN_NAME = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def check_class_names(names: Iterable[object], where: str = "") -> list[str]:
    """``names`` as a list, once each is known to be a non-empty, single-line printable string;
    anything else is a one-line DataError naming the class (``where``: the file it came from)."""
    out = list(names)
    for i, name in enumerate(out):
        bad = None
        if not isinstance(name, str) or not name.strip():
            bad = "is not a non-empty string"
        elif (m := _UNSAFE_IN_NAME.search(name)) is not None:
            bad = f"holds the character {m.group()!r}"
        if bad:
            prefix = f"{where}: " if where else ""
            raise DataError(f"{prefix}class name {i} {shorten(name)} {bad}: class names must be single-line "
                            "printable text")
    return out


def stream_stem(name: str) -> str:
    """A file-name stem for a stream or camera name, for its output files (one video per stream):
    ``rtsp://user:***@cam1:554/live`` -> ``cam1_554_live`` (never the user name or password),
    ``webcam0`` -> ``webcam0``, ``gate north`` -> ``gate_north``."""
    text = safe_name(name)
    if "://" in text:
        try:
            parts = urlsplit(text)
            text = parts.netloc.rsplit("@", 1)[-1] + parts.path + (f"?{parts.query}" if parts.query else "")
        except ValueError:  # not a well-formed URL (e.g. a broken IPv6 host): drop the scheme only
            text = text.split("://", 1)[1].rsplit("@", 1)[-1]
    return re.sub(r"[^\w.\-]+", "_", text).strip("._")[:100] or "stream"


def _under(path: str, root: str | Path | None) -> PurePosixPath | None:
    if root is None:
        return None
    try:
        rel = Path(os.path.relpath(path, root))
    except ValueError:  # another drive on Windows
        return None
    return None if rel.parts[:1] == ("..",) else PurePosixPath(rel.as_posix())


def frame_file_name(frame: FrameRef | str, root: str | Path | None = None, escape: bool = True) -> str:
    """The name a frame (or a still image's path) has in JSON outputs when no image of it is
    written: a video file's frame ``clip.mp4#frame=000123``, a stream frame its URL with the tag,
    an image under ``root`` its path relative to ``root``, any other image its file name. escape:
    undecodable bytes as :func:`safe_name` writes them; False keeps them as lone surrogates (COCO's
    reversible rule)."""
    video = video_of(frame)
    if video is not None:
        stream, index = video
        name = frame_name(stream if "://" in stream else Path(stream).name, index)
    else:
        source = _path_of(frame)
        rel = _under(source, root)
        name = rel.as_posix() if rel is not None else Path(source).name
    return safe_name(name) if escape else name


def output_relpath(frame: FrameRef | str, root: str | Path | None = None, ext: str | None = None) -> PurePosixPath:
    """Where a per-frame output file of ``frame`` (or a still image's path) goes, relative to its
    output folder.

    ext: replace the suffix (``".png"`` for masks); video frames always get one (default ``.jpg``).
    """
    video = video_of(frame)
    if video is not None:
        stream, index = video
        stem = stream_stem(stream) if "://" in stream else (re.sub(r"[^\w.\-]+", "_", Path(stream).stem) or "video")
        return PurePosixPath(f"{stem}_{index:06d}{ext or '.jpg'}")
    source = _path_of(frame)
    rel = _under(source, root) or PurePosixPath(Path(source).name)
    return rel.with_suffix(ext) if ext else rel
