"""Outputs never land on inputs: one rule, checked up front and again at every write.

A command that reads local files registers them (and the folders it reads recursively) with
:func:`protected` for as long as it runs. Then

* up front, :func:`check_out_dir` refuses an output folder that is an input folder, lies inside
  one, or holds an input file (``detect photos/ --out photos``, ``detect photo.jpg --out .``);
* at every write, the lowest writers (:func:`cvapps.io.images.write_image`,
  :func:`cvapps.checkpoint.atomic_write`) call :func:`check_writable_target`, which refuses to
  replace a registered file (by resolved path or by inode, so symlinks and hard links count) or to
  write anything inside a registered folder.

The registry is process-wide (the writer threads of a run see it) and scoped: leaving
:func:`protected` forgets what it registered. A command with an output folder also registers it
as an *output root* (:func:`output_root`, entered by :func:`protected` too): every file below it is
written by :mod:`cvapps.io.safe_write` through folders opened one by one from the root down,
never through a symbolic link. This module imports nothing above ``cvapps.errors``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from typing import Iterable, Iterator

from cvapps.errors import OutputError

PathLike = str | os.PathLike[str]

_lock = threading.Lock()
_files: Counter[str] = Counter()          # resolved path -> registrations
_inodes: Counter[tuple[int, int]] = Counter()  # (st_dev, st_ino) of registered files
_folders: Counter[str] = Counter()        # resolved folder -> registrations
_roots: Counter[tuple[str, str]] = Counter()  # (absolute, resolved) output root -> registrations


def _real(path: PathLike) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _absolute(path: PathLike) -> str:
    """Absolute and normalised, without following any link (``..`` is resolved lexically)."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


@contextlib.contextmanager
def output_root(out: PathLike, option: str = "--out ") -> Iterator[None]:
    """Register ``out`` as an output root for the block (see :mod:`cvapps.io.safe_write`), after
    :func:`check_out_path` (a dangling link or an existing file is refused up front)."""
    check_out_path(out, option)
    key = (_absolute(out), _real(out))
    with _lock:
        _roots[key] += 1
    try:
        yield
    finally:
        with _lock:
            _roots[key] -= 1
            if _roots[key] <= 0:
                del _roots[key]


def find_root(path: PathLike) -> tuple[str, list[str]] | None:
    """``(resolved root, names below it)`` for the innermost registered output root holding
    ``path`` (matched as spelled, or against the root's resolved path); None outside every root.
    A path that names a root and then climbs out of it with ``..`` is refused (OutputError)."""
    with _lock:
        roots = list(_roots)
    if not roots:
        return None
    target = _absolute(path)
    best: tuple[str, list[str]] | None = None
    for spelled, real in roots:
        for base in (spelled, real):
            if _inside(target, base):
                rel = [p for p in target[len(base):].split(os.sep) if p]
                if best is None or len(rel) < len(best[1]):
                    best = (real, rel)
    if best is None:
        raw = os.path.join(os.getcwd(), os.path.expanduser(os.fspath(path))).split(os.sep)
        if ".." in raw:  # e.g. OUT/sub/../../elsewhere: spelled inside OUT, lands outside it
            head = os.path.normpath(os.sep.join(raw[:raw.index("..")]) or os.sep)
            if any(_inside(head, base) for root in roots for base in root):
                raise OutputError(f"refusing to write {path}: it climbs out of the output folder with '..'")
    return best


def check_out_path(out: PathLike, option: str = "--out ") -> None:
    """Refuse (OutputError, one line) an output folder that is an existing file or a symbolic link
    to nothing (which would fail later with an obscure "File exists")."""
    path = os.path.expanduser(os.fspath(out))
    if os.path.islink(path) and not os.path.exists(path):
        raise OutputError(f"{option}{out} is a symbolic link to {os.readlink(path)}, which does not exist: "
                          "remove the link or create its target")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{option}{out} is an existing file; it must be a folder")


@contextlib.contextmanager
def protected(out: PathLike | None = None, files: Iterable[PathLike] = (), folders: Iterable[PathLike] = (),
              option: str = "--out ", others: Iterable[PathLike | None] = ()) -> Iterator[None]:
    """Register input ``files`` and ``folders`` for the duration of the block; with ``out`` (the
    output folder), first check it with :func:`check_out_dir` (``option`` names it in errors).
    ``others`` (a model, a ground-truth file; None entries are ignored) are protected from writes
    but play no part in the folder rule."""
    files, folders = list(files), list(folders)
    if out is not None:
        check_out_dir(out, files, folders, option)
    files = [_real(f) for f in [*files, *(o for o in others if o)]]
    folders = [_real(d) for d in folders]
    inodes = [key for key in map(_inode, files) if key is not None]
    with _lock:
        _files.update(files)
        _inodes.update(inodes)
        _folders.update(folders)
    try:
        with output_root(out, option) if out is not None else contextlib.nullcontext():
            yield
    finally:
        with _lock:
            _files.subtract(files)
            _inodes.subtract(inodes)
            _folders.subtract(folders)
            for counter in (_files, _inodes, _folders):
                counter += Counter()  # drop the zero counts (in place)


def check_out_dir(out: PathLike, files: Iterable[PathLike] = (), folders: Iterable[PathLike] = (),
                  option: str = "--out ") -> None:
    """Refuse (OutputError, one line) an output folder that is an existing file, is an input folder
    or lies inside one, or is the folder holding an input file."""
    check_out_path(out, option)
    real = _real(out)
    for folder in folders:
        if _inside(real, _real(folder)):
            raise OutputError(f"{option}{out} is inside the input folder {folder}; outputs there could replace "
                              "inputs or be read back as inputs: choose an output folder outside it")
    for file in files:
        if os.path.dirname(_real(file)) == real:
            raise OutputError(f"{option}{out} holds the input {file}; outputs there could replace it: "
                              "choose another output folder")


def check_writable_target(path: PathLike, inputs: Iterable[PathLike] = ()) -> None:
    """Refuse (OutputError) to write ``path`` when it is a registered input file (or one of
    ``inputs``), the same file under another name, or lies inside a registered input folder."""
    extra = [_real(p) for p in inputs]
    if not (_files or _folders or extra):
        return
    real = _real(path)
    key = _inode(real)
    with _lock:
        hit = (real in _files or real in extra or (key is not None and key in _inodes)
               or any(_inside(real, folder) for folder in _folders))
    if not hit and key is not None:
        hit = key in {_inode(p) for p in extra}
    if hit:
        raise OutputError(f"refusing to write {path}: it is an input of this command (outputs never replace inputs)")
