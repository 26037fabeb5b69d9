"""The one way cvapps writes a file: a fresh regular file inside OUT, through no symbolic link.

Every writer (images, masks, sinks, checkpoints, plots, the resume manifest, synthetic data,
conversions, exports) goes through :func:`stage` (or the helpers built on it). For a target below a
registered output root (:func:`cvapps.io.guard.output_root`, entered by every command with an OUT):

1. the folder chain is opened from the root's resolved path down, one name at a time, with
   ``O_DIRECTORY | O_NOFOLLOW`` relative to the folder above (``dir_fd``), missing folders made with
   ``mkdir(name, dir_fd=...)``; a name that is a symbolic link or not a folder is refused with a
   one-line OutputError, so a link planted in OUT never redirects a write;
2. the data goes to a hidden temporary file made in that folder with ``O_CREAT | O_EXCL |
   O_NOFOLLOW`` (always a new inode, never an existing file);
3. ``os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)`` moves it into place: a rename replaces the
   *name*, so a symbolic or hard link planted at the final name is replaced, never written through,
   and readers never see half a file.

Writers that need a path (OpenCV's and PyAV's video writers, ``torch.save``, ``savefig``) get
``/proc/self/fd/<folder fd>/<temp name>`` (:attr:`StagedFile.writer_path`): the folder is pinned by
its descriptor, so the path cannot be re-routed after the checks. Outside every registered root (the
Python API writing to a user's path) the user's folder is taken as given and steps 2-3 still hold.
Every target also passes :func:`cvapps.io.guard.check_writable_target` (never an input of the run).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from cvapps.errors import OutputError
from cvapps.io.guard import PathLike, check_out_path, check_writable_target, find_root

_flag = lambda name: getattr(os, name, 0)
DIR_FLAGS = os.O_RDONLY | _flag("O_DIRECTORY") | _flag("O_NOFOLLOW") | _flag("O_CLOEXEC")
# Folders passed through need only search permission (a 0711 home): O_PATH descriptors serve as dir_fd
PASS_FLAGS = (DIR_FLAGS & ~os.O_RDONLY) | os.O_PATH if hasattr(os, "O_PATH") else DIR_FLAGS
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _flag("O_NOFOLLOW") | _flag("O_CLOEXEC") | _flag("O_BINARY")
_PROC_FD = os.path.isdir("/proc/self/fd")
_NAME_KEPT = 100  # characters of the final name kept in a temp name (names are at most 255 bytes)

Created = list[tuple[int, str]]  # folders made on the way: (descriptor of the folder above, name)


def output_error(path: PathLike, exc: BaseException) -> OutputError:
    """The one-line error of a failed write of ``path`` (``could not write PATH: reason``)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
    return OutputError(f"could not write {path}: {reason}")


def _refusal(target: PathLike, parent: int, name: str, shown: str, exc: OSError, folder: bool = True) -> OutputError:
    """Why ``name`` (a folder, or the file itself) in the folder ``parent`` could not be opened, as one line."""
    try:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except OSError:
        return output_error(target, exc)
    if stat.S_ISLNK(mode):
        return OutputError(f"refusing to write {target}: {shown} is a symbolic link (cvapps writes only inside "
                           "its output folder, through no link); remove it")
    if folder and not stat.S_ISDIR(mode):
        return OutputError(f"could not write {target}: {shown} is not a folder")
    return output_error(target, exc)


def _close_created(created: Created) -> None:
    for fd, _ in created:
        os.close(fd)
    created.clear()


def _open_readable(name: str, flags: int, dir_fd: int | None = None) -> int:
    """``os.open`` of a folder; one that cannot be read (search permission only) is opened with O_PATH."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        if flags == PASS_FLAGS or not hasattr(os, "O_PATH"):
            raise
        return os.open(name, (flags & ~os.O_RDONLY) | os.O_PATH, dir_fd=dir_fd)


def _walk(real_root: str, names: list[str], target: PathLike, created: Created) -> int:
    """Descriptor of the folder ``real_root/names...``, every step opened with O_NOFOLLOW under the
    one above (from ``/``: the root's own path was resolved when it was registered); missing
    folders are made and recorded in ``created``."""
    parts = [p for p in real_root.split(os.sep) if p] + names
    fd = os.open(os.sep, os.O_RDONLY | _flag("O_DIRECTORY") | _flag("O_CLOEXEC"))
    shown = os.sep
    try:
        for i, name in enumerate(parts):
            if name in (".", ".."):
                raise OutputError(f"refusing to write {target}: '{name}' in a path below the output folder")
            shown = os.path.join(shown, name)
            flags = PASS_FLAGS if i + 1 < len(parts) else DIR_FLAGS  # the last one may be listed
            try:
                try:
                    child = _open_readable(name, flags, fd)
                except FileNotFoundError:
                    try:
                        os.mkdir(name, 0o777, dir_fd=fd)
                        created.append((os.dup(fd), name))
                    except FileExistsError:
                        pass  # made meanwhile by another writer, or a dangling link: the open tells
                    child = _open_readable(name, flags, fd)
            except OSError as exc:
                raise _refusal(target, fd, name, shown, exc) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _folder(folder: PathLike, target: PathLike, created: Created, create: bool = True) -> int:
    """Descriptor of ``folder``: walked safely below a registered root, else the user's folder as given."""
    try:
        found = find_root(folder)
    except OutputError:
        raise OutputError(f"refusing to write {target}: it climbs out of the output folder with '..'") from None
    if found is not None:
        return _walk(found[0], found[1], target, created)
    path = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    try:
        if create:
            if os.path.islink(path) and not os.path.exists(path):
                raise OutputError(f"could not write {target}: {path} is a symbolic link to nothing")
            os.makedirs(path, exist_ok=True)
        return _open_readable(path, os.O_RDONLY | _flag("O_DIRECTORY") | _flag("O_CLOEXEC"))
    except OSError as exc:
        raise output_error(target, exc) from None


class StagedFile:
    """A hidden temporary file beside its final name (see the module doc): write it through
    :meth:`open` or :attr:`writer_path`, then :meth:`commit` (rename into place) or :meth:`discard`."""

    def __init__(self, path: Path, dir_fd: int, tmp: str, fd: int, created: Created) -> None:
        self.path, self.dir_fd, self.tmp, self.created = path, dir_fd, tmp, created
        self.name = path.name
        self._fd: int | None = fd
        self.done = False

    @property
    def writer_path(self) -> str:
        """A path naming the temp file for writers that only take paths (the folder pinned by its descriptor)."""
        if _PROC_FD:
            return f"/proc/self/fd/{self.dir_fd}/{self.tmp}"
        return str(self.path.parent / self.tmp)  # no /proc: the folder chain was checked just now

    def open(self, mode: str = "wb") -> IO[Any]:
        """The temp file as a Python file object (which then owns the descriptor)."""
        fd, self._fd = self._fd, None
        if fd is None:
            raise ValueError(f"{self.path}: the temp file is already open")
        return os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {}))

    def sync(self) -> None:
        """fsync the temp file (when a writer wrote it through :attr:`writer_path`)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def commit(self) -> None:
        """Move the temp file over the final name (OutputError, temp removed, if that fails)."""
        try:
            os.replace(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            self.discard()
            raise output_error(self.path, exc) from None
        self.done = True
        _close_created(self.created)  # the folders hold a file now: keep them
        self._close()

    def unlink(self) -> None:
        """Remove the temp file (not the folders made for it: see :func:`discard_all`)."""
        if not self.done:
            self.done = True
            with contextlib.suppress(OSError):
                os.unlink(self.tmp, dir_fd=self.dir_fd)

    def discard(self) -> None:
        discard_all([self])

    def _remove_folders(self) -> None:
        for parent, name in reversed(self.created):
            with contextlib.suppress(OSError):  # not empty (another file went there): kept
                os.rmdir(name, dir_fd=parent)
        _close_created(self.created)
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __del__(self) -> None:  # a staged file dropped without commit or discard: no descriptor leak
        with contextlib.suppress(Exception):
            if self.dir_fd >= 0:
                self.discard()


def discard_all(files: Iterable[StagedFile]) -> None:
    """Remove the temp files, then every folder made for them that is empty again (a failed run
    leaves no empty ``tracks/``)."""
    files = [f for f in files if f.dir_fd >= 0]
    for f in files:
        f.unlink()
    for f in files:
        f._remove_folders()


def stage(path: PathLike, suffix: str = ".tmp") -> StagedFile:
    """A new temp file for ``path`` (its folders made as needed); ``suffix`` ends the temp name
    (e.g. ``.mp4``, for writers that pick the format from it)."""
    path = Path(os.path.expanduser(os.fspath(path)))
    check_writable_target(path)  # never over an input of the running command
    if path.name in ("", ".", ".."):
        raise OutputError(f"could not write {path}: not a file name")
    created: Created = []
    dir_fd = _folder(path.parent, path, created)
    try:
        while True:
            tmp = f".{path.name[:_NAME_KEPT]}.{secrets.token_hex(4)}{suffix}"
            try:
                fd = os.open(tmp, NEW_FILE_FLAGS, 0o666, dir_fd=dir_fd)  # 0o666: the umask sets the mode
                break
            except FileExistsError:
                continue
    except BaseException as exc:
        os.close(dir_fd)
        for parent, name in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=parent)
        _close_created(created)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        raise
    return StagedFile(path, dir_fd, tmp, fd, created)


def write_with(path: PathLike, write: Callable[[str], Any], sync: bool = True) -> None:
    """Call ``write(temp path)`` (see :attr:`StagedFile.writer_path`), fsync, move into place.
    Any OSError is a one-line OutputError naming ``path``; the previous file stays as it was."""
    staged = stage(path)
    try:
        write(staged.writer_path)
        if sync:
            staged.sync()
    except BaseException as exc:
        staged.discard()
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        raise
    staged.commit()


def write_bytes(path: PathLike, data: bytes | str, sync: bool = False) -> None:
    """Write ``data`` (str: UTF-8) to ``path`` atomically through :func:`stage`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(payload)

    write_with(path, write, sync)


def copy_file(src: PathLike, path: PathLike) -> None:
    """Copy the contents of ``src`` (read as given) to a fresh file ``path``."""
    def write(tmp: str) -> None:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)

    write_with(path, write)


def ensure_dir(path: PathLike) -> None:
    """Make the folder ``path`` (and those above it) the safe way; OutputError if it cannot be."""
    created: Created = []
    os.close(_folder(path, path, created))
    _close_created(created)


@contextlib.contextmanager
def open_dir(path: PathLike, create: bool = True) -> Iterator[int]:
    """A descriptor of the folder ``path``, reached the safe way, for ``*at`` calls
    (``os.listdir(fd)``, ``os.unlink(name, dir_fd=fd)``, ``os.symlink(..., dir_fd=fd)``)."""
    created: Created = []
    fd = _folder(path, path, created, create)
    _close_created(created)
    try:
        yield fd
    finally:
        os.close(fd)


def remove(path: PathLike) -> None:
    """Remove ``path`` (a file, a link, or a whole folder) inside its checked parent; a link is
    removed itself, never what it points to. Nothing there: nothing done."""
    path = Path(path)
    check_writable_target(path)
    with open_dir(path.parent) as fd:
        try:
            mode = os.stat(path.name, dir_fd=fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        try:
            if stat.S_ISDIR(mode):
                shutil.rmtree(path.name, dir_fd=fd)  # fd-based: never follows a link inside
            else:
                os.unlink(path.name, dir_fd=fd)
        except OSError as exc:
            raise output_error(path, exc) from None


def fresh_dir(path: PathLike) -> Path:
    """An empty folder at ``path`` made now (whatever was there removed: a link itself, never what
    it points to), for a tool that writes files its own way (ultralytics' trainer): nothing planted
    before the run can be in it."""
    path = Path(path)
    remove(path)
    with open_dir(path.parent) as fd:
        try:
            os.mkdir(path.name, 0o777, dir_fd=fd)  # fails if anything was put there meanwhile
        except OSError as exc:
            raise output_error(path, exc) from None
    return path


def check_tree(path: PathLike, links_in: Iterable[str] = ()) -> None:
    """OutputError (one line) when anything under the folder ``path`` is a symbolic link (except in
    the sub-folders ``links_in``), a hard link, or not a regular file or folder: what a tool that
    writes its own way (ultralytics' trainer) must find in, and leave in, the folder it writes to."""
    root = Path(path)
    if os.path.islink(root):
        raise OutputError(f"refusing to use {root}: it is a symbolic link; remove it")
    allowed = {os.path.normpath(root / sub) for sub in links_in}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            entry = Path(folder) / name
            st = os.lstat(entry)
            if stat.S_ISLNK(st.st_mode) and os.path.normpath(folder) in allowed:
                continue
            why = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else
                   None if stat.S_ISDIR(st.st_mode) else
                   "not a regular file" if not stat.S_ISREG(st.st_mode) else
                   f"a hard link ({st.st_nlink} names)" if st.st_nlink != 1 else None)
            if why is not None:
                raise OutputError(f"refusing to use {root}: {entry} is {why} (cvapps writes only regular files "
                                  "it made, through no link); remove it")


def open_append(path: PathLike) -> IO[bytes]:
    """``path`` opened for reading and writing (``r+b``; made if missing), for a file cvapps keeps
    adding to (the resume manifest). Refused (one line) when the name is a symbolic link, not a
    regular file, or a hard link (another name of the same file), so nothing is written through it."""
    path = Path(os.path.expanduser(os.fspath(path)))
    check_writable_target(path)
    created: Created = []
    dir_fd = _folder(path.parent, path, created)
    _close_created(created)
    try:
        flags = os.O_RDWR | os.O_CREAT | _flag("O_NOFOLLOW") | _flag("O_CLOEXEC") | _flag("O_NONBLOCK")
        try:
            fd = os.open(path.name, flags, 0o666, dir_fd=dir_fd)
        except OSError as exc:
            raise _refusal(path, dir_fd, path.name, str(path), exc, folder=False) from None
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    why = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
           f"is a hard link (one of {st.st_nlink} names of one file)" if st.st_nlink != 1 else None)
    if why is not None:
        os.close(fd)
        raise OutputError(f"refusing to write {path}: it {why}; cvapps adds only to a file it made: remove it")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "r+b")


def ensure_writable_folder(out: PathLike, option: str = "--out ") -> None:
    """Make ``out`` and check a file can be made there; OutputError (one line) if not. Run before
    any slow work, so a bad ``out`` fails in a second, not after loading a dataset."""
    check_out_path(out, option)
    try:
        ensure_dir(out)  # made and kept (another rank of a distributed run may be checking it too)
        stage(Path(out) / ".cvapps-write-test").discard()
    except OutputError as exc:
        reason = str(exc).rsplit(": ", 1)[-1]
        raise OutputError(f"{option}{out}: cannot write there ({reason})") from None
