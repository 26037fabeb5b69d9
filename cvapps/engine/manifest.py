"""The resume manifest of a distributed prediction run: an append-only JSON-lines file in OUT.

::

    {"cvapps_manifest": 1, "run": {...}}                     # header: what run this is (source, model hash, options)
    {"key": "imgs/a.jpg", "frames": [{"source", "index", "timestamp", "width", "height", "prediction"}]}
    {"key": "clip.mp4#frames=0-32", "frames": [...]}          # one line per finished item
    {"key": "imgs/bad.jpg", "skipped": "not an image"}        # an unreadable file, reported again at the end

Lines are written only by the driver, flushed as each item finishes (so a killed driver loses at
most the items it had not written yet) and fsynced every few seconds and at close. A torn last line
(the process died mid-write) is dropped and cut off on reopening, so the next line starts clean. Any
other record is checked before use (:mod:`cvapps.engine.manifest_check`: schema, sizes against the
item's frames, at most :data:`~cvapps.engine.manifest_check.MAX_LINE_BYTES` a line); one that fails
is reported in one warning line and its item predicted again. A rerun with a different header
(another source, model or option) is refused instead of mixing two runs' predictions. An exclusive
``flock`` keeps two drivers off the same manifest. The file is opened through
:func:`cvapps.io.safe_write.open_append`: a symbolic or hard link planted at its name is refused,
never written through.

Predictions are stored in their one JSON form (:func:`encode_prediction`, the JSON lines' form too),
which is lossless (floats as JSON numbers round-trip float32 exactly, masks as pycocotools RLE, track
ids and counts kept), so outputs rebuilt from the manifest equal a run's own.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from cvapps.engine.manifest_check import MAX_LINE_BYTES, RecordCheck
from cvapps.errors import CvappsError, DataError
from cvapps.io.safe_write import open_append
from cvapps.structures import Prediction

try:  # POSIX only; elsewhere two drivers on one OUT are not prevented
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

VERSION = 1
FSYNC_EVERY_S = 2.0


def encode_prediction(prediction: Prediction, names: Sequence[str] = ()) -> dict[str, Any]:
    """A prediction -> its one JSON form (:meth:`~cvapps.structures.Prediction.to_json`, lossless),
    which :func:`decode_prediction` turns back into an equal one; ``names`` name the labels."""
    return prediction.to_json(names)


def decode_prediction(data: dict[str, Any]) -> Prediction:
    """The inverse of :func:`encode_prediction`."""
    return Prediction.from_json(data)


def _key_of(head: bytes) -> str | None:
    """The key of a record that cannot be parsed whole (too deep, too long), from its start as
    :meth:`Manifest.append` writes it, so a later good record of that item supersedes it."""
    match = re.match(rb'\{"key": ("(?:[^"\\]|\\.){0,4000}")', head)
    try:
        key = json.loads(match.group(1)) if match else None
    except ValueError:
        return None
    return key if isinstance(key, str) else None


class Manifest:
    """``OUT/<name>``: finished items of one run (see the module doc). Use as a context manager.

    run: the header describing the run (JSON-ready); ``done``: key -> record of finished items;
    check: ``check(record)`` -> None, or why a stored record cannot be used (default: the schema only,
    :class:`~cvapps.engine.manifest_check.RecordCheck` without items).
    """

    def __init__(self, path: str | Path, run: dict[str, Any],
                 check: Callable[[Any], str | None] | None = None) -> None:
        self.path = Path(path)
        self.run = json.loads(json.dumps(run))  # compared with the stored header as JSON reads it back
        self.check = check or RecordCheck()
        self.done: dict[str, dict[str, Any]] = {}
        self.bad: dict[str, tuple[int, str]] = {}  # key (or "line N") -> (line, why) of records not used
        self.resumed = 0  # items found in the file when it was opened
        self._fh: Any = None
        self._last_sync = 0.0

    def __enter__(self) -> Manifest:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        fh = open_append(self.path)  # a regular file of its own, reached through no link (else one line)
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise CvappsError(f"{self.path} is in use by another run (one driver per output folder)") from None
        try:
            fh.seek(0)
            good_end = self._read(fh)
            fh.truncate(good_end)  # drop a torn last line, so the next append starts on a fresh line
            fh.seek(good_end)
            if good_end == 0:
                fh.write((json.dumps({"cvapps_manifest": VERSION, "run": self.run}) + "\n").encode())
                fh.flush()
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        self.resumed = len(self.done)

    def _read(self, fh: Any) -> int:
        """Read the file's records into ``done``; returns the offset after the last whole line.

        Only the text after the final newline can be torn (each record is one write ending in a
        newline): it is ignored, and its item is simply predicted again. A record that does not hold
        (invalid JSON, nested too deeply, over the line cap, not the schema, not its frame's size) is
        left out of ``done`` too, and reported in one warning line."""
        offset = 0
        for number, line, size, head in self._lines(fh):
            offset += size
            record, why = None, "longer than the line cap" if line is None else None
            if line is not None:
                try:
                    record = json.loads(line)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    why = "not valid JSON"
            if number == 1:
                if why is not None:
                    raise DataError(f"{self.path}: line 1 is not a cvapps manifest header; the manifest is damaged "
                                    "(delete it to start the run over)")
                self._check_header(record)
                continue
            why = why or self.check(record)
            key = record["key"] if isinstance(record, dict) and isinstance(record.get("key"), str) else _key_of(head)
            if why is None:
                self.done[key] = record
                self.bad.pop(key, None)  # a later good record of the item replaces a bad one
            else:
                self.done.pop(key, None)
                self.bad[key if key is not None else f"line {number}"] = (number, why)
        if self.bad:
            number, why = next(iter(self.bad.values()))
            print(f"warning: {self.path}: {len(self.bad)} damaged records (line {number}: {why}); their items "
                  "are predicted again", file=sys.stderr)
        return offset

    @staticmethod
    def _lines(fh: Any) -> Iterator[tuple[int, bytes | None, int, bytes]]:
        """``(line number, line or None when over the cap, bytes taken, its first bytes)`` for every
        whole line, reading at most the cap at a time (a torn last line is not yielded)."""
        number = 0
        while True:
            chunk = fh.readline(MAX_LINE_BYTES + 1)
            size = len(chunk)
            if not chunk:
                return
            line: bytes | None = chunk[:-1]
            head = chunk[:4096]
            if not chunk.endswith(b"\n"):
                if size <= MAX_LINE_BYTES:
                    return  # the torn last line
                line = None
                while chunk and not chunk.endswith(b"\n"):  # skip the rest of an overlong line
                    chunk = fh.readline(1 << 20)
                    size += len(chunk)
                if not chunk:
                    return
            number += 1
            yield number, line, size, head

    def _check_header(self, header: Any) -> None:
        if not isinstance(header, dict) or header.get("cvapps_manifest") != VERSION:
            raise DataError(f"{self.path}: not a cvapps manifest (version {VERSION})")
        if header.get("run") != self.run:
            stored = header.get("run") or {}
            diff = sorted(k for k in set(stored) | set(self.run) if stored.get(k) != self.run.get(k))
            raise CvappsError(f"{self.path} records another run (different {', '.join(diff)}); use another "
                              "output folder, or delete the manifest to start over")

    def append(self, record: dict[str, Any]) -> None:
        """Record one finished item (``{"key", "frames"}`` or ``{"key", "skipped"}``); flushed at once."""
        self._fh.write((json.dumps(record, allow_nan=False) + "\n").encode())
        self._fh.flush()  # in the OS now: survives a killed process
        self.done[record["key"]] = record
        if time.monotonic() - self._last_sync > FSYNC_EVERY_S:  # and on disk every few seconds
            os.fsync(self._fh.fileno())
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            finally:
                self._fh.close()  # also releases the lock
