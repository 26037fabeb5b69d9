"""What a source is, decided once, and how it is read: :func:`describe_source` -> :class:`SourceSpec`,
plus :class:`SourceOptions` (from ``options``).

Every reader takes these two instead of deciding again: :func:`~cvapps.io.sources.open_source` (one
process), :func:`cvapps.engine.ray_plan.plan_items` (Ray), :func:`local_inputs` (what outputs must
never replace) and the CLI's choice of outputs. Kinds (:data:`SOURCE_KINDS`):

* ``"image"`` / ``"video"``: one file (by extension); ``"folder"``: the images under it (recursive,
  sorted, walked lazily); ``"glob"``: the images matching a pattern (``**`` recurses);
* ``"list"``: a ``.txt`` with one path per line (relative to the file's folder; blank lines and
  ``#`` comments skipped); ``"paths"``: a Python list of paths (folders expand to their images);
* ``"webcam"``: a camera index (``0``, or ``"0"`` when no such file exists); ``"stream"``: a URL
  (anything ``scheme://``), always read live, even ``http://host/clip.mp4``;
* ``"streams"``: a streams file, a ``.txt`` with any URL line or only webcam indexes (the rule of
  :func:`~cvapps.io.sources.multi.is_streams_file`); every line must then be a stream, a bad one is
  an error naming ``file:line`` (read here, once).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvapps.errors import CvappsError
from cvapps.io.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from cvapps.io.sources.files import (
    Skip,
    expand_paths,
    glob_images,
    iter_image_files,
    txt_lines,
)
from cvapps.io.sources.live import is_url
from cvapps.io.sources.multi import StreamSpec, is_streams_file, read_streams_file

SOURCE_KINDS = ("image", "video", "folder", "glob", "list", "paths", "webcam", "stream", "streams")
LIVE_KINDS = ("webcam", "stream", "streams")
_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class SourceSpec:
    """What a source is (made by :func:`describe_source`; see the module doc for the kinds).

    kind: one of :data:`SOURCE_KINDS`. text: the source as given (a path as its string, ``"list[N]"``
    for a list of paths, the index of a webcam): its name in reports and in a Ray run's identity.
    paths: the local paths it names, ``~`` expanded: the file (image, video, list, streams file),
    the folder, the glob pattern, or each path of a list; empty for a stream or a webcam.
    url: the URL of a ``"stream"``; webcam: the index of a ``"webcam"``; streams: the streams of a
    ``"streams"`` file.
    """

    kind: str
    text: str
    paths: tuple[str, ...] = ()
    url: str | None = None
    webcam: int | None = None
    streams: tuple[StreamSpec, ...] = ()

    @property
    def is_live(self) -> bool:
        """A webcam, a stream or a streams file: frames as they come, nothing read from the disk."""
        return self.kind in LIVE_KINDS

    @property
    def is_video(self) -> bool:
        """Frames that are not image files (a video file, or anything live)."""
        return self.kind == "video" or self.is_live

    @property
    def root(self) -> str | None:
        """The folder per-image outputs mirror: a folder source's path, else None."""
        return self.paths[0] if self.kind == "folder" else None


def describe_source(source: Any) -> SourceSpec:
    """The one decision of what ``source`` is: an image, video, folder, glob, ``.txt`` image list or
    streams file, list of paths, webcam index (int or digits) or URL (a :class:`SourceSpec` is
    returned as it is). A source that does not exist, an unsupported file type, a glob that matches
    no image or a streams file with a bad line is a one-line CvappsError."""
    if isinstance(source, SourceSpec):
        return source
    if isinstance(source, bool):  # bool is an int subclass; True is not "webcam 1"
        raise CvappsError(f"invalid source: {source!r}")
    if isinstance(source, int):
        return SourceSpec("webcam", str(source), webcam=source)
    if isinstance(source, (list, tuple)):
        items = tuple(os.fspath(p) for p in source)
        return SourceSpec("paths", f"list[{len(items)}]", items)
    if not isinstance(source, (str, os.PathLike)):
        raise CvappsError(f"invalid source: {source!r}")
    s = os.fspath(source)
    if not s.strip():
        raise CvappsError("source not found: '' (empty source)")
    if is_url(s):
        return SourceSpec("stream", s, url=s.strip())
    local = os.path.expanduser(s)
    if re.fullmatch(r"\d+", s.strip()) and not os.path.exists(local):
        return SourceSpec("webcam", s, webcam=int(s.strip()))
    if os.path.isdir(local):
        return SourceSpec("folder", s, (local,))
    if os.path.exists(local):
        return _describe_file(s, local)
    if _GLOB_MAGIC.search(s):
        if next(glob_images(local), None) is None:
            raise CvappsError(f"source not found: {s} (no images match)")
        return SourceSpec("glob", s, (local,))
    raise CvappsError(f"source not found: {s}")


def _describe_file(s: str, local: str) -> SourceSpec:
    suffix = os.path.splitext(local)[1].lower()
    if suffix == ".txt" and is_streams_file(local):  # any URL line: streams, never an image list
        return SourceSpec("streams", s, (local,), streams=tuple(read_streams_file(local)))
    if suffix == ".txt":
        if not Path(local).is_file():
            raise CvappsError(f"cannot read list {s}: not a regular file")
        return SourceSpec("list", s, (local,))
    if suffix in VIDEO_EXTENSIONS:
        if not os.path.isfile(local):
            raise CvappsError(f"cannot open video: {s} (not a regular file)")
        return SourceSpec("video", s, (local,))
    if suffix in IMAGE_EXTENSIONS:  # read_image refuses (and reports) non-regular files
        return SourceSpec("image", s, (local,))
    raise CvappsError(f"unsupported source: {s} (expected an image, video, folder, .txt list, glob, "
                      "webcam index or stream URL)")


def source_paths(spec: SourceSpec, skip: Skip = None) -> Iterator[str]:
    """The files a file source reads, in order (folders walked lazily, a list's folders expanded to
    their images); ``skip(path, reason)`` hears of entries the walk leaves out. A live source has
    none (a CvappsError)."""
    first = spec.paths[0] if spec.paths else ""
    if spec.kind == "folder":
        return iter_image_files(first, skip)
    if spec.kind == "list":
        return expand_paths(txt_lines(Path(first)), skip)
    if spec.kind == "paths":
        return expand_paths(iter(spec.paths), skip)
    if spec.kind == "glob":
        return glob_images(first)
    if spec.kind in ("image", "video"):
        return iter([first])
    raise CvappsError(f"{spec.text}: a live source reads no files")


def local_inputs(source: Any) -> tuple[list[str], list[str]]:
    """``(files, folders)`` that ``source`` (a :class:`SourceSpec`, or anything :func:`describe_source`
    takes) reads from the local disk: what outputs must never replace (see :mod:`cvapps.io.guard`).
    Streams and webcams read none; a streams file is itself an input."""
    spec = describe_source(source)
    if spec.kind in ("stream", "webcam", "streams"):
        return list(spec.paths), []
    entries = list(glob_images(spec.paths[0])) if spec.kind == "glob" else list(spec.paths)
    if spec.kind == "list":
        try:
            entries += list(txt_lines(Path(spec.paths[0])))
        except (OSError, UnicodeDecodeError):
            pass  # open_source reports the unreadable list itself
    folders = {e for e in entries if os.path.isdir(e)}
    return [e for e in entries if e not in folders], sorted(folders)
