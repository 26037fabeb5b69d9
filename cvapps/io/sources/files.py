"""Still images as a source: one file, a folder (walked lazily), a glob, a ``.txt`` list, a list.

Only regular files are ever read (:func:`~cvapps.io.images.read_image` refuses FIFOs, devices and
files over the size cap before opening them); a symlink loop, or a folder that cannot be listed,
is reported in ``Source.skipped`` like an unreadable image.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from cvapps.errors import ImageReadError
from cvapps.io.images import IMAGE_EXTENSIONS, read_image
from cvapps.io.sources.base import Source
from cvapps.structures import Frame

#: Called with (path, reason) for an entry the walk leaves out; None: leave it out silently.
Skip = Callable[[str, str], None] | None


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_image_files(folder: str | os.PathLike[str], skip: Skip = None) -> Iterator[str]:
    """Yield image paths under ``folder`` recursively, in sorted order, one directory at a time.

    Entries of one directory are sorted by name with sub-folders visited in place, so the
    order equals sorting by path components. Hidden entries (leading ".") are skipped: macOS
    "._x.jpg" files, ".ipynb_checkpoints" and write_image's temp files are never images.
    Symlinked folders are followed, but a folder already on the current path is not (no cycles);
    such a loop, a self-referencing symlink and a folder that cannot be listed are passed to
    ``skip(path, reason)``.
    """
    return _walk_sorted(os.fspath(folder), frozenset(), skip)


def _walk_sorted(folder: str, _seen: frozenset[tuple[int, int]], skip: Skip) -> Iterator[str]:
    try:
        st = os.stat(folder)
        key = (st.st_dev, st.st_ino)
        if key in _seen:
            if skip is not None:
                skip(folder, "symlink loop (folder already being listed)")
            return
        seen = _seen | {key}
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        if skip is not None:
            skip(folder, _os_reason(e))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError as e:  # ELOOP: a symlink that (eventually) points at itself
            if skip is not None:
                skip(entry.path, _os_reason(e))
            continue
        if is_dir:
            yield from _walk_sorted(entry.path, seen, skip)
        elif is_image_name(entry.name):
            yield entry.path


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot list ({e.strerror or e})"


class ImageFilesSource(Source):
    """Still images from a path generator (file, folder walk, glob, .txt or Python list).

    ``paths(skip)`` yields candidate paths and reports entries it leaves out to ``skip`` (None
    when only counting). ``frame_count`` is the number of candidate files, counted lazily by
    walking once without decoding (frames actually yielded = frame_count - unreadable ones).
    Frames carry the path as given, a running ``index`` over yielded frames and timestamp 0.0.
    """

    def __init__(self, name: str, paths: Callable[[Skip], Iterator[str]], *, queue_size: int = 64,
                 shard: tuple[int, int] | None = None) -> None:
        super().__init__(name, queue_size=queue_size, shard=shard)
        self._paths = paths
        self._count: int | None = None

    @property
    def frame_count(self) -> int:  # type: ignore[override]
        if self._count is None:
            self._count = sum(1 for k, _ in enumerate(self._paths(None)) if self._in_shard(k))
        return self._count

    def _skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))

    def _produce(self) -> Iterator[Frame]:
        index = 0
        for position, path in enumerate(self._paths(self._skip)):
            if self._stop.is_set():
                return
            if not self._in_shard(position):
                continue  # another shard's file: never opened
            try:
                image = read_image(path)
            except ImageReadError as e:
                self.skipped.append((path, e.reason))
                continue
            yield Frame(image=image, source=path, index=index, timestamp=0.0, stream=path)  # a still image
            index += 1


def expand_paths(paths: Iterator[str], skip: Skip = None) -> Iterator[str]:
    """Folders in a list expand to their images; everything else is passed through as a path."""
    for p in paths:
        if os.path.isdir(p):
            yield from iter_image_files(p, skip)
        else:
            yield p


def txt_lines(txt: Path) -> Iterator[str]:
    """Paths listed in a .txt file; relative ones are resolved against the file's folder."""
    base = txt.parent
    with open(txt, encoding="utf-8-sig") as f:  # -sig: tolerate a BOM from Windows editors
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            entry = os.path.expanduser(entry)
            yield entry if os.path.isabs(entry) else os.path.join(base, entry)


def glob_images(pattern: str) -> Iterator[str]:
    """Image files matching ``pattern`` (``**`` recurses), sorted; non-files are left out."""
    for p in sorted(glob.iglob(pattern, recursive=True)):
        if is_image_name(p) and not os.path.isdir(p):
            yield p  # FIFOs and the like are refused (and reported) by read_image
