"""One frame-source abstraction for all tasks: images, folders, globs, lists, videos, webcams, URLs.

``open_source(spec)`` returns a :class:`Source`, an iterable of :class:`~cvapps.structures.Frame`
(HxWx3 BGR uint8). Frames are read by a background thread into a bounded queue so that decoding
overlaps with inference:

* Files (images, folders, videos) never drop frames: the reader blocks while the queue is full.
* Live sources (webcams, stream URLs) keep only the newest frame by default (stale frames are
  replaced and counted in ``dropped``); ``buffer=True`` keeps every frame instead.
* A live source whose reads fail reconnects with exponential backoff (0.5 s doubling, capped at
  4 s) and ends the iteration cleanly once ``reconnect_s`` seconds have passed without a frame.

Unreadable images are skipped and recorded in ``Source.skipped`` as ``(path, reason)``; errors in
the reader thread are re-raised in the consumer as :class:`~cvapps.errors.CvappsError`. Use the
source as a context manager (or call ``close()``) to stop the thread and release captures.

``shard=(i, n)`` keeps every n-th item starting at item i (0-based), so n processes can split one
folder or video without coordination; items outside the shard are never decoded (image files
are not opened, video frames are grabbed but not decoded).
"""

from __future__ import annotations

import glob
import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from cvapps.errors import CvappsError, ImageReadError
from cvapps.io.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_image
from cvapps.structures import Frame

__all__ = [
    "STREAM_SCHEMES",
    "Source",
    "ImageFilesSource",
    "VideoSource",
    "StreamSource",
    "WebcamSource",
    "open_source",
    "iter_image_files",
    "parse_shard",
]

STREAM_SCHEMES: tuple[str, ...] = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://")

_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 4.0
_POLL_S = 0.1  # how often blocked queue operations re-check the stop event
_CLOSE_JOIN_S = 1.0  # close() waits at most this long for the reader thread


class Capture(Protocol):
    """The subset of ``cv2.VideoCapture`` the sources use (lets tests inject fakes)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's spelling

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def grab(self) -> bool: ...

    def get(self, prop_id: int) -> float: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[Any], Capture]


class _End:
    """Queue sentinel: the reader finished normally."""


class _Failure:
    """Queue sentinel: the reader raised; carries the exception to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = _End()


class Source:
    """Base class: an iterable of :class:`Frame` filled by a background reader thread.

    Attributes: ``name``, ``is_live``, ``is_video``, ``fps`` (float or None), ``frame_size``
    ((w, h) or None), ``frame_count`` (int or None), ``skipped`` ([(path, reason)] for unreadable
    images), ``dropped`` (frames discarded by a keep-newest live source).

    A source is single-pass: the thread starts on the first iteration, and iterating again
    after the end (or after ``close()``) yields nothing. Subclasses implement :meth:`_produce`.
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
        self.shard: tuple[int, int] = _check_shard(shard)
        self.skipped: list[tuple[str, str]] = []
        self.dropped = 0
        self._keep_newest = keep_newest
        # Keep-newest needs exactly one slot: the consumer always gets the latest frame.
        maxsize = 1 if keep_newest else max(1, queue_size)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._finished = False
        self._closed = False
        self._close_called = False

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
        self._stop.set()
        self._closed = True

    # -- subclass hooks -------------------------------------------------------------------
    def _produce(self) -> Iterator[Frame]:
        """Yield frames; runs in the reader thread. Must return soon after ``_stop`` is set."""
        raise NotImplementedError

    def _release(self) -> None:
        """Release resources (captures); called once, from the reader thread or ``close()``."""

    # -- reader thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            for frame in self._produce():
                if self._stop.is_set():
                    break
                if self._keep_newest:
                    self._put_newest(frame)
                elif not self._put_blocking(frame):
                    break
            self._put_blocking(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, not swallowed
            self._put_blocking(_Failure(exc))
        finally:
            self._release()

    def _put_blocking(self, item: Any) -> bool:
        """Put without dropping; give up (False) once the source is closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _put_newest(self, item: Any) -> None:
        """Replace a frame the consumer has not taken yet; single producer, so this terminates."""
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name=f"cvapps-source:{self.name}", daemon=True
                )
                self._thread.start()

    # -- consumer side --------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        self._ensure_started()
        while not self._finished and not self._closed:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                thread = self._thread
                if thread is None or (not thread.is_alive() and self._queue.empty()):
                    self._finished = True  # reader died without a sentinel (closed meanwhile)
                continue
            if item is _END:
                self._finished = True
                return
            if isinstance(item, _Failure):
                self._finished = True
                exc = item.exc
                if isinstance(exc, CvappsError):
                    raise exc
                msg = f"error reading {self.name}: {type(exc).__name__}: {exc}"
                raise CvappsError(msg) from exc
            yield item

    def close(self) -> None:
        """Stop the reader thread (waits at most ~1 s) and release captures. Idempotent."""
        # A separate flag: _closed may already be set by request_stop(), which joins nothing.
        if self._close_called:
            return
        self._close_called = True
        self._closed = True
        self._stop.set()
        with self._start_lock:
            thread = self._thread
        if thread is None:
            self._release()  # never started: the thread will not release for us
            return
        # Drain so a reader blocked on put notices the stop event at its next poll.
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if thread is not threading.current_thread():
            # A capture stuck inside read() cannot be interrupted; the daemon thread releases
            # it when read() returns, so close() never hangs on it.
            thread.join(timeout=_CLOSE_JOIN_S)

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, is_live={self.is_live}, "
            f"is_video={self.is_video}, frame_count={self.frame_count})"
        )


# ---------------------------------------------------------------------------------------------
# Still images: single file, folder, glob, .txt list, Python list
# ---------------------------------------------------------------------------------------------
def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_image_files(folder: str | os.PathLike[str]) -> Iterator[str]:
    """Yield image paths under ``folder`` recursively, in sorted order, one directory at a time.

    Entries of one directory are sorted by name with sub-folders visited in place, so the
    order equals sorting by path components. Hidden entries (leading ".") are skipped: macOS
    "._x.jpg" files, ".ipynb_checkpoints" and write_image's temp files are never images.
    Symlinked folders are followed, but a folder already on the current path is not (no cycles).
    """
    return _walk_sorted(os.fspath(folder), frozenset())


def _walk_sorted(folder: str, _seen: frozenset[tuple[int, int]]) -> Iterator[str]:
    try:
        st = os.stat(folder)
        key = (st.st_dev, st.st_ino)
        if key in _seen:
            return
        seen = _seen | {key}
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            yield from _walk_sorted(entry.path, seen)
        elif _is_image_name(entry.name):
            yield entry.path


class ImageFilesSource(Source):
    """Still images from a path generator (file, folder walk, glob, .txt or Python list).

    ``frame_count`` is the number of candidate files, counted lazily by walking the paths once
    without decoding (frames actually yielded = frame_count - len(skipped)). Frames carry the
    path as given, a running ``index`` over yielded frames and timestamp 0.0.
    """

    def __init__(
        self,
        name: str,
        paths: Callable[[], Iterator[str]],
        *,
        queue_size: int = 64,
        shard: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(name, queue_size=queue_size, shard=shard)
        self._paths = paths
        self._count: int | None = None

    @property
    def frame_count(self) -> int:  # type: ignore[override]
        if self._count is None:
            self._count = sum(1 for k, _ in enumerate(self._paths()) if self._in_shard(k))
        return self._count

    def _produce(self) -> Iterator[Frame]:
        index = 0
        for position, path in enumerate(self._paths()):
            if self._stop.is_set():
                return
            if not self._in_shard(position):
                continue  # another shard's file: never opened
            try:
                image = read_image(path)
            except ImageReadError as e:
                self.skipped.append((path, e.reason))
                continue
            yield Frame(image=image, source=path, index=index, timestamp=0.0)
            index += 1


def _expand(paths: Iterator[str]) -> Iterator[str]:
    """Folders in a list expand to their images; everything else is passed through as a path."""
    for p in paths:
        if os.path.isdir(p):
            yield from iter_image_files(p)
        else:
            yield p


def _txt_lines(txt: Path) -> Iterator[str]:
    """Paths listed in a .txt file; relative ones are resolved against the file's folder."""
    base = txt.parent
    with open(txt, encoding="utf-8-sig") as f:  # -sig: tolerate a BOM from Windows editors
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            entry = os.path.expanduser(entry)
            yield entry if os.path.isabs(entry) else os.path.join(base, entry)


def _glob_images(pattern: str) -> Iterator[str]:
    for p in sorted(glob.iglob(pattern, recursive=True)):
        if _is_image_name(p) and os.path.isfile(p):
            yield p


# ---------------------------------------------------------------------------------------------
# Video files
# ---------------------------------------------------------------------------------------------
def _fps_of(cap: Capture) -> float | None:
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if math.isfinite(fps) and 0.0 < fps < 1000.0 else None  # 0/NaN/90000 = unknown


def _size_of(cap: Capture) -> tuple[int, int] | None:
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    return (w, h) if w > 0 and h > 0 else None


class VideoSource(Source):
    """Frames of a video file (or a URL to one); never drops frames.

    ``index`` is the true frame number in the file; with ``vid_stride`` only frames with
    ``index % vid_stride == 0`` are yielded (the others are grabbed but not decoded).
    ``frame_count`` is the container's frame count (all frames, before striding), or None.
    """

    is_video = True

    def __init__(
        self,
        path: str,
        *,
        vid_stride: int = 1,
        queue_size: int = 64,
        capture_factory: CaptureFactory | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(path, queue_size=queue_size, shard=shard)
        self.vid_stride = vid_stride
        factory = capture_factory or cv2.VideoCapture
        self._cap: Capture | None = factory(path)
        if not self._cap.isOpened():
            self._cap.release()
            self._cap = None
            raise CvappsError(f"cannot open video: {path}")
        self.fps = _fps_of(self._cap)
        self.frame_size = _size_of(self._cap)
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = n if n > 0 else None

    def _produce(self) -> Iterator[Frame]:
        cap = self._cap
        assert cap is not None
        index = 0
        while not self._stop.is_set():
            if index % self.vid_stride or not self._in_shard(index // self.vid_stride):
                # grab() skips the decode of frames nobody will see.
                if not cap.grab():
                    return
                index += 1
                continue
            ok, image = cap.read()
            if not ok or image is None:
                return  # end of file (or an undecodable tail, as OpenCV reports both alike)
            if self.fps:
                ts = index / self.fps
            else:
                ts = float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
            name = f"{self.name}#frame={index:06d}"
            yield Frame(image=image, source=name, index=index, timestamp=ts)
            index += 1

    @property
    def expected_frames(self) -> int | None:
        if self.frame_count is None:
            return None
        strided = -(-self.frame_count // self.vid_stride)
        i, n = self.shard
        return max(0, -(-(strided - i) // n))

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


# ---------------------------------------------------------------------------------------------
# Live sources: stream URLs and webcams
# ---------------------------------------------------------------------------------------------
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


def _default_stream_factory(reconnect_s: float) -> CaptureFactory:
    """cv2.VideoCapture over FFMPEG with open/read timeouts: a dead stream must not hang ~30 s."""
    timeout_ms = int(min(max(reconnect_s, 1.0), 30.0) * 1000)

    def factory(target: Any) -> Capture:
        if isinstance(target, int):
            return cv2.VideoCapture(target)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms,
        ]  # fmt: skip
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)

    return factory


class StreamSource(Source):
    """A live stream (URL, or any target ``capture_factory`` can open).

    ``buffer=None``/``False`` keeps only the newest frame (``dropped`` counts the rest);
    ``buffer=True`` keeps every frame in a bounded queue. When reads fail the capture is
    reopened with backoff 0.5, 1, 2, 4, 4 ... s; after ``reconnect_s`` s without a frame the
    iteration ends cleanly. ``capture_factory(target)`` must return an object with
    ``isOpened/read/get/release`` (``cv2.VideoCapture`` by default; tests inject fakes).
    Frame ``index`` counts frames read since start (striding applies), ``timestamp`` is the
    wall-clock time in seconds since the source was opened.
    """

    is_live = True

    def __init__(
        self,
        url: Any,
        *,
        capture_factory: CaptureFactory | None = None,
        vid_stride: int = 1,
        buffer: bool | None = None,
        reconnect_s: float = 10.0,
        queue_size: int = 64,
        name: str | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(
            name if name is not None else redact_url(str(url)),
            queue_size=queue_size,
            keep_newest=not buffer,
            shard=shard,
        )
        self.target = url
        self.vid_stride = vid_stride
        self.reconnect_s = reconnect_s
        self._factory = capture_factory or _default_stream_factory(reconnect_s)
        self._cap: Capture | None = self._open_initial()
        self.fps = _fps_of(self._cap)
        self.frame_size = _size_of(self._cap)
        self._t0 = time.monotonic()

    def _try_open(self) -> Capture | None:
        cap = self._factory(self.target)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _open_initial(self) -> Capture:
        """Retry with backoff for up to reconnect_s: a camera may be rebooting right now."""
        deadline = time.monotonic() + self.reconnect_s
        backoff = _BACKOFF_START_S
        while True:
            cap = self._try_open()
            if cap is not None:
                return cap
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CvappsError(f"cannot open stream URL: {self.name}")
            time.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _reconnect(self, last_frame_at: float) -> Capture | None:
        """Reopen with backoff until a capture opens, or None once reconnect_s has passed."""
        backoff = _BACKOFF_START_S
        while not self._stop.is_set():
            remaining = last_frame_at + self.reconnect_s - time.monotonic()
            if remaining <= 0:
                return None
            if self._stop.wait(min(backoff, remaining)):  # sleeps, but wakes on close()
                return None
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            cap = self._try_open()
            if cap is not None:
                return cap
        return None

    def _produce(self) -> Iterator[Frame]:
        index = 0
        last_frame_at = time.monotonic()
        while not self._stop.is_set():
            cap = self._cap
            ok, image = cap.read() if cap is not None else (False, None)
            if ok and image is not None:
                last_frame_at = time.monotonic()
                if index % self.vid_stride == 0 and self._in_shard(index // self.vid_stride):
                    yield Frame(
                        image=image,
                        source=f"{self.name}#frame={index:06d}",
                        index=index,
                        timestamp=last_frame_at - self._t0,
                    )
                index += 1
                continue
            # The stream stalled or ended: drop this capture and try to get a fresh one.
            self._release()
            cap = self._reconnect(last_frame_at)
            if cap is None:
                return
            # last_frame_at is refreshed only by real frames, so a stream that opens but never
            # delivers still ends after reconnect_s.
            self._cap = cap

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class WebcamSource(StreamSource):
    """A local camera by index; fails at once (no retry) when the camera cannot be opened."""

    def __init__(self, index: int, **kwargs: Any) -> None:
        self.index = index
        super().__init__(index, name=f"webcam{index}", **kwargs)

    def _open_initial(self) -> Capture:
        cap = self._try_open()
        if cap is None:
            raise CvappsError(f"cannot open webcam {self.index}")
        return cap


# ---------------------------------------------------------------------------------------------
# open_source
# ---------------------------------------------------------------------------------------------
_GLOB_MAGIC = re.compile(r"[*?[]")


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
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
    return _check_shard((int(m.group(1)), int(m.group(2))))


def _is_url(s: str) -> bool:
    return s.lower().startswith(STREAM_SCHEMES)


def open_source(
    spec: str | os.PathLike[str] | int | list[str | os.PathLike[str]],
    *,
    vid_stride: int = 1,
    buffer: bool | None = None,
    reconnect_s: float = 10.0,
    queue_size: int = 64,
    shard: tuple[int, int] | str | None = None,
) -> Source:
    """Open any input as a :class:`Source` of frames.

    ``spec``: an image file; a folder (recursive, sorted, streamed); a glob (``"data/**/*.jpg"``);
    a ``.txt`` file with one path per line (relative to the txt's folder; blank lines and ``#``
    comments skipped); a list of paths; a video file (by extension); a webcam index (``0`` or
    ``"0"``); or a stream URL (rtsp, rtsps, http, https, udp, tcp). An http(s) URL ending in a
    video extension is read as a video file (ends at EOF, drops nothing). ``buffer=None`` means
    keep-newest for live sources; files never drop frames. ``shard``: ``(i, n)`` or ``"i/n"``,
    keep items i, i+n, ... (files, or video frames after ``vid_stride``).
    """
    shard = parse_shard(shard) if isinstance(shard, str) else _check_shard(shard)
    if isinstance(vid_stride, bool) or not isinstance(vid_stride, int) or vid_stride < 1:
        raise CvappsError(f"vid_stride must be an integer >= 1, got {vid_stride!r}")
    if queue_size < 1:
        raise CvappsError(f"queue_size must be >= 1, got {queue_size!r}")
    if reconnect_s < 0:
        raise CvappsError(f"reconnect_s must be >= 0, got {reconnect_s!r}")
    live_kwargs: dict[str, Any] = dict(
        vid_stride=vid_stride, buffer=buffer, reconnect_s=reconnect_s, queue_size=queue_size, shard=shard
    )

    if isinstance(spec, bool):  # bool is an int subclass; True is not "webcam 1"
        raise CvappsError(f"invalid source: {spec!r}")
    if isinstance(spec, int):
        return WebcamSource(spec, **live_kwargs)
    if isinstance(spec, (list, tuple)):
        items = [os.fspath(p) for p in spec]
        return ImageFilesSource(
            f"list[{len(items)}]", lambda: _expand(iter(items)), queue_size=queue_size, shard=shard
        )
    if not isinstance(spec, (str, os.PathLike)):
        raise CvappsError(f"invalid source: {spec!r}")

    s = os.fspath(spec)
    if not s.strip():
        raise CvappsError("source not found: '' (empty source)")
    if _is_url(s.strip()):
        url = s.strip()
        path_suffix = os.path.splitext(urlsplit(url).path)[1].lower()
        if url.lower().startswith(("http://", "https://")) and path_suffix in VIDEO_EXTENSIONS:
            return VideoSource(url, vid_stride=vid_stride, queue_size=queue_size, shard=shard)
        return StreamSource(url, **live_kwargs)

    local = os.path.expanduser(s)
    if re.fullmatch(r"\d+", s.strip()) and not os.path.exists(local):
        return WebcamSource(int(s.strip()), **live_kwargs)
    if os.path.isdir(local):
        return ImageFilesSource(s, lambda: iter_image_files(local), queue_size=queue_size, shard=shard)
    if os.path.isfile(local):
        suffix = os.path.splitext(local)[1].lower()
        if suffix == ".txt":
            txt = Path(local)
            return ImageFilesSource(s, lambda: _expand(_txt_lines(txt)), queue_size=queue_size, shard=shard)
        if suffix in VIDEO_EXTENSIONS:
            return VideoSource(local, vid_stride=vid_stride, queue_size=queue_size, shard=shard)
        if suffix in IMAGE_EXTENSIONS:
            return ImageFilesSource(s, lambda: iter([local]), queue_size=queue_size, shard=shard)
        raise CvappsError(
            f"unsupported source: {s} (expected an image, video, folder, .txt list, glob, "
            "webcam index or stream URL)"
        )
    if _GLOB_MAGIC.search(s):
        if next(_glob_images(local), None) is None:
            raise CvappsError(f"source not found: {s} (no images match)")
        return ImageFilesSource(s, lambda: _glob_images(local), queue_size=queue_size, shard=shard)
    raise CvappsError(f"source not found: {s}")


def local_inputs(spec: Any) -> tuple[list[str], list[str]]:
    """``(files, folders)`` that ``spec`` (as :func:`open_source` takes it) reads from the local disk:
    what outputs must never replace (see :mod:`cvapps.io.guard`). Streams and webcams read none."""
    if isinstance(spec, (list, tuple)):
        entries = [os.fspath(p) for p in spec]
    elif isinstance(spec, bool) or not isinstance(spec, (str, os.PathLike)):
        return [], []
    else:
        s = os.path.expanduser(os.fspath(spec).strip())
        if not s or _is_url(s) or (re.fullmatch(r"\d+", s) and not os.path.exists(s)):
            return [], []
        entries = [s] if os.path.exists(s) else list(_glob_images(s)) if _GLOB_MAGIC.search(s) else []
        if os.path.isfile(s) and s.lower().endswith(".txt"):
            try:
                entries += list(_txt_lines(Path(s)))
            except (OSError, UnicodeDecodeError):
                pass  # open_source reports the unreadable list itself
    folders = {e for e in entries if os.path.isdir(e)}
    return [e for e in entries if e not in folders], sorted(folders)
