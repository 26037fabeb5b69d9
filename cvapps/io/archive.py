"""Bounded reading of torch ``.pt`` zip archives: sizes are checked before anything is inflated or unpickled.

``torch.save`` writes a zip: ``<prefix>/data.pkl`` (the pickle), ``<prefix>/data/<key>`` (one member
per tensor storage, stored uncompressed) and a few small records (``byteorder``, ``version``). A
hostile file can declare a 3 GiB ``data.pkl`` deflated into a few MB, storages far larger than any
model, or a central directory of millions of entries. :func:`check_torch_archive` reads only the
zip's end record and central directory and refuses such a file before torch (or cvapps' own
unpickler) allocates anything; every later read is bounded by the sizes checked here (zipfile and
torch's reader both stop at the declared size). Both cvapps checkpoints and ultralytics files pass
through it. This module imports nothing above ``cvapps.errors``.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import IO

from cvapps.errors import CheckpointError

MAX_PICKLE_BYTES = 64 << 20  # data.pkl: a yolov8x or a cvapps checkpoint with optimizer state is < 2 MB
MAX_TOTAL_BYTES = 1 << 30  # all members together: any detector cvapps runs, with optimizer state
MAX_MEMBERS = 100_000
MAX_DIRECTORY_BYTES = 16 << 20  # the central directory itself (zipfile keeps an object per entry)
MAX_RATIO = 100  # torch stores members uncompressed: a member inflating 100x is a bomb
RATIO_FLOOR = 1 << 20  # ... once it inflates past 1 MiB
_EOCD, _EOCD64_LOCATOR = b"PK\x05\x06", b"PK\x06\x07"


class NotATorchArchive(CheckpointError):
    """The file is not a zip archive laid out as ``torch.save`` writes it."""


class TorchArchive:
    """An open, checked ``.pt`` archive: ``prefix`` (``"archive/"``), ``members`` (name -> ZipInfo)."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, prefix: str) -> None:
        self.path, self.zf, self.prefix = path, zf, prefix
        self.members = {info.filename: info for info in zf.infolist()}

    def size(self, record: str) -> int | None:
        """Declared (checked) size of ``prefix + record``; None when absent."""
        info = self.members.get(self.prefix + record)
        return None if info is None else info.file_size

    def open(self, record: str) -> IO[bytes]:
        """A reader of ``prefix + record`` that yields at most its declared size."""
        return self.zf.open(self.members[self.prefix + record])

    def read(self, record: str) -> bytes:
        with self.open(record) as fh:
            return fh.read()

    def close(self) -> None:
        self.zf.close()

    def __enter__(self) -> TorchArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_torch_archive(path: str | Path, *, max_total: int = MAX_TOTAL_BYTES,
                        max_pickle: int = MAX_PICKLE_BYTES) -> TorchArchive:
    """Open ``path`` as a torch zip archive after checking the sizes it declares.

    Refused (one-line CheckpointError): more than :data:`MAX_MEMBERS` entries or a central
    directory over :data:`MAX_DIRECTORY_BYTES`; a ``data.pkl`` over ``max_pickle``; members that
    together inflate past ``max_total``; a member compressed more than :data:`MAX_RATIO` to 1 or
    declaring more stored bytes than the file holds. NotATorchArchive for a file that is not a zip
    with one ``<prefix>/data.pkl``. The caller closes the returned archive.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as fh:
            entries, directory = _directory_size(fh, file_size)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if entries is None:
        raise NotATorchArchive(f"{path}: not a torch zip archive")
    if entries > MAX_MEMBERS or directory > MAX_DIRECTORY_BYTES:
        raise CheckpointError(f"{path}: refused: its zip directory declares {entries} entries in {directory} bytes "
                              f"(at most {MAX_MEMBERS} entries / {MAX_DIRECTORY_BYTES >> 20} MiB)")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError, EOFError, struct.error, NotImplementedError):
        raise NotATorchArchive(f"{path}: not a torch zip archive (damaged zip directory)") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        return _checked(path, zf, file_size, max_total, max_pickle)
    except BaseException:
        zf.close()
        raise


def _checked(path: Path, zf: zipfile.ZipFile, file_size: int, max_total: int, max_pickle: int) -> TorchArchive:
    infos = zf.infolist()
    pickles = [i.filename for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
    if len(pickles) != 1:
        raise NotATorchArchive(f"{path}: not a torch zip archive (no single <folder>/data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    if len({i.filename for i in infos}) != len(infos):
        raise CheckpointError(f"{path}: refused: its zip archive names a member twice")
    total = 0
    for info in infos:
        name = info.filename[:80]
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"{path}: refused: zip member {name} uses compression method {info.compress_type}")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CheckpointError(f"{path}: refused: zip member {name} declares {info.file_size} bytes but stores "
                                  f"{info.compress_size}")
        if info.header_offset + info.compress_size > file_size:
            raise CheckpointError(f"{path}: refused: zip member {name} declares more bytes than the file holds "
                                  "(truncated or tampered)")
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise CheckpointError(f"{path}: refused: zip member {name} inflates {info.compress_size} bytes to "
                                  f"{info.file_size} (a zip bomb)")
        if info.filename == pickles[0] and info.file_size > max_pickle:
            raise CheckpointError(f"{path}: refused: its pickle (data.pkl) declares {info.file_size} bytes, over the "
                                  f"{max_pickle >> 20} MiB any model needs")
        total += info.file_size
        if total > max_total:
            raise CheckpointError(f"{path}: refused: its members inflate to over {max_total >> 20} MiB, more than "
                                  "any model cvapps runs")
    return TorchArchive(path, zf, prefix)


def _directory_size(fh: IO[bytes], file_size: int) -> tuple[int | None, int]:
    """(entries, central directory bytes) from the zip's end record (zip64 aware); (None, 0) when
    the file has no end record, i.e. is not a zip."""
    tail_len = min(file_size, 65_536 + 22)
    fh.seek(file_size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        return None, 0
    entries, directory = struct.unpack("<HI", tail[at + 10: at + 16])
    if entries == 0xFFFF or directory == 0xFFFFFFFF:  # zip64: the real counts are in the zip64 end record
        loc = tail[at - 20: at] if at >= 20 else b""
        if not loc.startswith(_EOCD64_LOCATOR):
            return None, 0
        (offset,) = struct.unpack("<Q", loc[8:16])
        if offset + 56 > file_size:
            return None, 0
        fh.seek(offset)
        record = fh.read(56)
        if not record.startswith(b"PK\x06\x06"):
            return None, 0
        entries, directory = struct.unpack("<QQ", record[32:48])
    return entries, directory
