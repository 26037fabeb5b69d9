"""The sink protocol and the two-phase close that keeps a run's outputs all-or-nothing.

A sink has ``write(frame, prediction)`` and ``close()``; optional ``start(source)`` is called once
before the first frame with the opened source (its ``fps``, ``frame_size``, ``vid_stride``).

Sinks whose outputs are whole files (JSON, CSV, mp4) derive from :class:`StagedSink`: ``prepare()``
writes every file to a hidden temporary name beside its final one, ``commit()`` moves them all into
place, ``discard()`` removes them. :func:`close_all` prepares every sink first and commits only when
all of them succeeded, so a failed run (disk full, a file limit) leaves either the complete,
consistent set of files or none of them, never ``predictions.json`` without ``predictions_coco.json``
or an mp4 without its index. Per-frame images are whole files written as they come.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, Sequence

from cvapps.errors import CvappsError
from cvapps.io.safe_write import StagedFile, discard_all, stage
from cvapps.structures import Frame


class Sink(Protocol):
    def write(self, frame: Frame, prediction: Any) -> None: ...

    def close(self) -> None: ...


def open_temp(path: Path, mode: str = "w", suffix: str = ".tmp") -> tuple[StagedFile, Any]:
    """A staged temp file for ``path`` (:func:`cvapps.io.safe_write.stage`: made inside OUT through
    no link, hidden so folder sources never pick it up, with the mode the umask gives); returns
    ``(staged file, open file)``."""
    staged = stage(path, suffix)
    return staged, staged.open(mode)


class StagedSink:
    """Base of sinks that write whole files on close (see the module doc). Subclasses implement
    :meth:`prepare` with :meth:`stage_text` / :meth:`stage_file`; ``close()`` alone prepares and commits."""

    def __init__(self) -> None:
        self._staged: list[StagedFile] = []

    @property
    def targets(self) -> list[Path]:
        """Final paths of the files this sink would write now (subclasses know them before prepare)."""
        return [staged.path for staged in self._staged]

    def stage_text(self, path: str | Path, text: str) -> None:
        """Write ``text`` (UTF-8) to a temp file for ``path``, flushed to disk."""
        staged, fh = open_temp(Path(path))
        self._staged.append(staged)
        with fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def stage_file(self, staged: StagedFile) -> None:
        """A temp file already written (e.g. a video) that becomes its final file on commit."""
        self._staged.append(staged)

    def prepare(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        for staged in self._staged:
            staged.commit()
        self._staged = []

    def discard(self) -> None:
        discard_all(self._staged)
        self._staged = []

    def close(self) -> None:
        try:
            self.prepare()
        except BaseException:
            self.discard()
            raise
        self.commit()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def close_all(sinks: Sequence[Any], commit: bool = True) -> list[str]:
    """Close every sink; staged files are moved into place only if every sink closed cleanly (and
    ``commit``), else all are removed. Returns the error lines ([] when all went well); the last one
    says which outputs were not written."""
    errors: list[str] = []
    staged: list[StagedSink] = []
    for sink in sinks:
        try:
            if isinstance(sink, StagedSink):
                staged.append(sink)
                if commit:  # a failed run's files are not written at all
                    sink.prepare()
            else:
                sink.close()
        except Exception as exc:  # noqa: BLE001 - close the others, then report every failure
            errors.append(f"{type(sink).__name__}: {_reason(exc)}")
    if not errors and commit:
        for sink in staged:
            try:
                sink.commit()
            except (OSError, CvappsError) as exc:
                errors.append(f"{type(sink).__name__}: {_reason(exc)}")
                sink.discard()
        return errors
    lost = [str(p) for sink in staged for p in sink.targets]
    for sink in staged:
        sink.discard()
    if lost:
        why = "; ".join(errors) if errors else "the run failed"
        errors.append(f"outputs not written ({why}): {', '.join(lost)}")
    return errors
