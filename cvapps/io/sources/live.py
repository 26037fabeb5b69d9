"""Live sources: stream URLs (anything with ``://``) and webcams.

Every URL is a stream, whatever its extension (``http://host/cam.ts``, ``.../clip.mp4``): it is
opened with FFmpeg open/read timeouts tied to ``reconnect_s``, so a frozen or stalled server ends
the run (or is reconnected) within about ``reconnect_s`` seconds instead of OpenCV's internal
~30 s. A stream that never yields a decodable frame is an error naming the source and, where
FFmpeg said why, its complaint.

Each outage (reads failed after at least one frame, until the next frame or the end) is kept as a
gap event, ``{"event": "gap", "source", "from", "to", "seconds", "reconnected", "from_utc",
"to_utc"}``: ``from``/``to`` are on the frames' ``timestamp`` clock (the last frame before the
outage, the first one after it or the moment the source gave up or was stopped). Nothing is
invented for the outage: no frames are yielded while it lasts. :meth:`StreamSource.take_events`
hands new events over (the JSON-lines sink writes them).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import cv2

from cvapps.errors import CvappsError
from cvapps.io.sources.base import Capture, CaptureFactory, Source
from cvapps.io.sources.options import SourceOptions
from cvapps.io.video_frames import fps_of, size_of
from cvapps.structures import Frame

_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 4.0
_MIN_TIMEOUT_S = 1.0  # FFmpeg needs a moment to connect and probe even a healthy stream
_MAX_TIMEOUT_S = 30.0


def redact_url(url: str) -> str:
    """Hide the password of ``rtsp://user:pass@host/...`` in names and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(spec: str) -> bool:
    """True for anything of the form ``scheme://...``: read as a live stream, never as a file."""
    return bool(_URL.match(spec.strip()))


def iso_utc(seconds: float) -> str:
    """``time.time()`` seconds as ISO 8601 UTC with milliseconds: ``2026-11-23T13:40:00.123Z``."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _timeout_ms(seconds: float) -> int:
    return int(min(max(seconds, _MIN_TIMEOUT_S), _MAX_TIMEOUT_S) * 1000)


def ffmpeg_capture(target: Any, open_s: float, read_s: float) -> Capture:
    """``cv2.VideoCapture`` over FFmpeg whose open and each read give up after the given seconds
    (at least 1 s, at most 30 s); an int target is a local camera (no timeouts apply)."""
    if isinstance(target, int):
        return cv2.VideoCapture(target)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _timeout_ms(open_s),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, _timeout_ms(read_s)]
    return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)


class NativeStderr:
    """Collects what native code (FFmpeg, OpenCV) writes to file descriptor 2 meanwhile.

    Used only around the first open of a stream, from the thread that builds the source, before
    any progress bar runs: FFmpeg's reason for refusing a stream is printed there, not returned.
    """

    text = ""

    def __enter__(self) -> NativeStderr:
        self._saved: int | None = None
        try:
            sys.stderr.flush()
            self._tmp = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._tmp.fileno(), 2)
        except (OSError, ValueError):  # no fd 2 (daemon) or no temp space: collect nothing
            self._saved = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read(65536).decode("utf-8", "replace")
        self._tmp.close()


_FFMPEG_LINE = re.compile(r"^\[([\w.-]+) @ (?:0x)?[0-9a-fA-F]+\]\s*(.+)$")
_TIMEOUT_LINE = re.compile(r"timeout triggered after ([\d.]+) ms", re.IGNORECASE)


def ffmpeg_complaint(text: str) -> str:
    """The last meaningful FFmpeg message in ``text`` (e.g. ``"http: Stream ends prematurely"``),
    or a timeout note, or ``""``."""
    complaint, timeout = "", ""
    for line in text.splitlines():
        m = _FFMPEG_LINE.match(line.strip())
        if m and "immediate exit requested" not in m.group(2).lower():
            complaint = f"{m.group(1)}: {m.group(2).strip()}"
        t = _TIMEOUT_LINE.search(line)
        if t:
            timeout = f"no data for {float(t.group(1)) / 1000:.1f} s (timeout)"
    return (complaint or timeout)[:200]


class StreamSource(Source):
    """A live stream (URL, or any target ``capture_factory`` can open).

    ``options`` (a :class:`~cvapps.io.sources.options.SourceOptions`, default its defaults):
    ``vid_stride``, ``shard``, ``queue_size`` (``max_file_mb`` does not apply), and:
    ``buffer=None``/``False`` keeps only the newest frame (``dropped`` counts the rest);
    ``buffer=True`` keeps every frame in a bounded queue. When reads fail the capture is
    reopened with backoff 0.5, 1, 2, 4, 4 ... s; after ``reconnect_s`` s without a frame the
    iteration ends cleanly (the FFmpeg open/read timeouts are set from ``reconnect_s`` too, so a
    frozen server cannot hold a read longer). A stream that never delivered a frame raises
    :class:`CvappsError`. ``capture_factory(target)`` must return an object with
    ``isOpened/read/get/release`` (FFmpeg with timeouts by default; tests inject fakes).
    Frame ``index`` counts frames read since start (striding applies), ``timestamp`` is the
    wall-clock time in seconds since the source was opened, or since ``t0`` (a
    ``time.monotonic()`` value) when given, so several sources can share one clock.
    ``explain``: add FFmpeg's reason to the error when the first open fails (read from file
    descriptor 2 meanwhile, so only where no other thread opens or prints at the same time;
    :class:`~cvapps.io.sources.multi.MultiSource` opens its streams in parallel and turns it off).
    """

    is_live = True

    def __init__(self, url: Any, options: SourceOptions | None = None, *,
                 capture_factory: CaptureFactory | None = None, name: str | None = None, t0: float | None = None,
                 explain: bool = True) -> None:
        opts = options if options is not None else SourceOptions()
        shard = opts.shard if isinstance(opts.shard, tuple) else None  # (always a tuple once made)
        super().__init__(name if name is not None else redact_url(str(url)), queue_size=opts.queue_size,
                         keep_newest=not opts.buffer, shard=shard)
        self.target = url
        self.vid_stride = opts.vid_stride
        self.reconnect_s = opts.reconnect_s
        self._factory = capture_factory
        self._explain = explain
        self._cap: Capture | None = self._open_initial()
        self.fps = fps_of(self._cap)
        self.frame_size = size_of(self._cap)
        self._t0 = time.monotonic() if t0 is None else t0
        self._wall0 = time.time() - (time.monotonic() - self._t0)  # the wall-clock time of _t0
        self.gaps: list[dict[str, Any]] = []  # every gap event so far (take_events hands out new ones)
        self._events_taken = 0
        self._events_lock = threading.Lock()

    def _try_open(self, deadline: float) -> Capture | None:
        if self._factory is not None:
            cap = self._factory(self.target)
        else:
            cap = ffmpeg_capture(self.target, deadline - time.monotonic(), self.reconnect_s)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _open_initial(self) -> Capture:
        """Retry with backoff for up to reconnect_s: a camera may be rebooting right now."""
        deadline = time.monotonic() + self.reconnect_s
        backoff = _BACKOFF_START_S
        explain = self._explain and self._factory is None and not isinstance(self.target, int)
        collect = NativeStderr() if explain else None
        why = ""
        while True:
            if collect is None:
                cap = self._try_open(deadline)
            else:
                with collect:
                    cap = self._try_open(deadline)
                why = ffmpeg_complaint(collect.text) or why
            if cap is not None:
                return cap
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CvappsError(f"cannot open stream URL: {self.name}" + (f" ({why})" if why else ""))
            time.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _reconnect(self, last_frame_at: float) -> Capture | None:
        """Reopen with backoff until a capture opens, or None once reconnect_s has passed."""
        backoff = _BACKOFF_START_S
        deadline = last_frame_at + self.reconnect_s
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._stop.wait(min(backoff, remaining)):  # sleeps, but wakes on close()
                return None
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            cap = self._try_open(deadline)
            if cap is not None:
                return cap
        return None

    def _produce(self) -> Iterator[Frame]:
        index = 0
        last_frame_at = time.monotonic()
        outage_since: float | None = None  # last frame's time while reads fail after a first frame
        while not self._stop.is_set():
            cap = self._cap
            ok, image = cap.read() if cap is not None else (False, None)
            if ok and image is not None:
                last_frame_at = time.monotonic()
                if outage_since is not None:
                    self._record_gap(outage_since, last_frame_at, reconnected=True)
                    outage_since = None
                if index % self.vid_stride == 0 and self._in_shard(index // self.vid_stride):
                    yield Frame.of_video(image, self.name, index, last_frame_at - self._t0)
                index += 1
                continue
            if index > 0 and outage_since is None:
                outage_since = last_frame_at
            # The stream stalled or ended: drop this capture and try to get a fresh one.
            self._release()
            cap = self._reconnect(last_frame_at)
            if cap is None:
                break
            # last_frame_at is refreshed only by real frames, so a stream that opens but never
            # delivers still ends after reconnect_s.
            self._cap = cap
        if outage_since is not None:  # gave up, or stopped while the stream was down
            self._record_gap(outage_since, time.monotonic(), reconnected=False)
        if index == 0 and not self._stop.is_set():
            raise CvappsError(f"stream {self.name}: no decodable video frame (it opened, but nothing "
                              f"could be decoded within {self.reconnect_s:g} s)")

    def _record_gap(self, start: float, end: float, reconnected: bool) -> None:
        """Keep one outage (``time.monotonic()`` values) as a gap event."""
        event = {"event": "gap", "source": self.name, "from": round(start - self._t0, 3),
                 "to": round(end - self._t0, 3), "seconds": round(end - start, 3), "reconnected": reconnected,
                 "from_utc": iso_utc(self._wall0 + start - self._t0), "to_utc": iso_utc(self._wall0 + end - self._t0)}
        with self._events_lock:
            self.gaps.append(event)

    def take_events(self) -> list[dict[str, Any]]:
        """Gap events recorded since the last call (thread-safe; the reader thread records them)."""
        with self._events_lock:
            new = self.gaps[self._events_taken:]
            self._events_taken = len(self.gaps)
        return new

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class WebcamSource(StreamSource):
    """A local camera by index; fails at once (no retry) when the camera cannot be opened."""

    def __init__(self, index: int, options: SourceOptions | None = None, **kwargs: Any) -> None:
        self.index = index
        kwargs.setdefault("name", f"webcam{index}")
        super().__init__(index, options, **kwargs)

    def _open_initial(self) -> Capture:
        # Without a camera every OpenCV backend logs its own failure (~12 lines); the one-line error says it.
        with opencv_silent():
            cap = self._try_open(time.monotonic())
        if cap is None:
            raise CvappsError(f"cannot open webcam {self.index}")
        return cap


@contextlib.contextmanager
def opencv_silent() -> Iterator[None]:
    """OpenCV's own log lines off for the block (its level is process-wide: restored after)."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(previous)
