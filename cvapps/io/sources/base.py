"""The :class:`Source` base class (a :class:`~cvapps.threads.Producer` of frames) and shard rules."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from cvapps.errors import CvappsError
from cvapps.structures import Frame
from cvapps.threads import QUEUE_BYTES, Producer

_CLOSE_JOIN_S = 1.0  # close() waits at most this long for the reader thread


class Capture(Protocol):
    """The subset of ``cv2.VideoCapture`` the sources use (lets tests inject fakes)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's spelling

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def grab(self) -> bool: ...

    def get(self, prop_id: int) -> float: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[Any], Capture]


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """``None`` -> ``(0, 1)``; otherwise a valid ``(index, count)`` with 0 <= index < count."""
    if shard is None:
        return (0, 1)
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise CvappsError(f"shard must be (index, count), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise CvappsError(f"shard {i}/{n}: need 0 <= index < count (index is 0-based)")
    return (i, n)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)``: this process takes items I, I+N, I+2N, ... (0-based I < N)."""
    if text is None or str(text).strip() == "":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise CvappsError(f"--shard expects I/N (e.g. 0/4, 0-based), got {text!r}")
    return check_shard((int(m.group(1)), int(m.group(2))))


class Source:
    """Base class: an iterable of :class:`Frame` filled by a background reader thread.

    Attributes: ``name``, ``is_live``, ``is_video``, ``fps`` (float or None), ``frame_size``
    ((w, h) or None), ``frame_count`` (int or None), ``skipped`` ([(path, reason)] for unreadable
    images), ``dropped`` (frames discarded by a keep-newest live source).

    A source is single-pass: the thread starts on the first iteration, and iterating again
    after the end (or after ``close()``) yields nothing. Subclasses implement :meth:`_produce`
    (which should return soon after ``self._stop`` is set) and :meth:`_release`.
    """

    name: str = ""
    is_live: bool = False
    is_video: bool = False
    fps: float | None = None
    frame_size: tuple[int, int] | None = None
    frame_count: int | None = None

    def __init__(self, name: str, *, queue_size: int = 64, keep_newest: bool = False,
                 shard: tuple[int, int] | None = None) -> None:
        self.name = name
        self.shard: tuple[int, int] = check_shard(shard)
        self.skipped: list[tuple[str, str]] = []
        # Keep-newest needs exactly one slot: the consumer always gets the latest frame.
        self._stage: Producer[Frame] = Producer(
            lambda _stop: self._produce(), maxsize=queue_size, keep_newest=keep_newest,
            name=f"cvapps-source:{name}", on_exit=self._release,
            max_bytes=QUEUE_BYTES, weigh=lambda frame: frame.image.nbytes)
        self._stop: threading.Event = self._stage.stop_event
        self._close_called = False

    @property
    def dropped(self) -> int:
        return self._stage.dropped

    def _in_shard(self, position: int) -> bool:
        """True when item ``position`` (0-based, counted before sharding) belongs to this shard."""
        i, n = self.shard
        return position % n == i

    @property
    def expected_frames(self) -> int | None:
        """How many frames iteration should yield (after stride and shard), or None if unknown."""
        return self.frame_count

    def request_stop(self) -> None:
        """Ask the reader to stop without waiting (safe from a signal handler: takes no lock).

        Iteration ends at the consumer's next poll (<= 0.1 s); call :meth:`close` afterwards to
        join the thread and release captures.
        """
        self._stage.stop()

    # -- subclass hooks -------------------------------------------------------------------
    def _produce(self) -> Iterator[Frame]:
        """Yield frames; runs in the reader thread. Must return soon after ``_stop`` is set."""
        raise NotImplementedError

    def _release(self) -> None:
        """Release resources (captures); called once, from the reader thread or ``close()``."""

    # -- consumer side --------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        try:
            yield from self._stage
        except CvappsError:
            raise
        except Exception as exc:  # a bug or library error in the reader: one line, with the source
            raise CvappsError(f"error reading {self.name}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Stop the reader thread (waits at most ~1 s) and release captures. Idempotent."""
        if self._close_called:
            return
        self._close_called = True
        if not self._stage.close(join_s=_CLOSE_JOIN_S):
            self._release()  # never started: the thread will not release for us

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, is_live={self.is_live}, "
            f"is_video={self.is_video}, frame_count={self.frame_count})"
        )
