"""Many live sources read as one: the frames of every camera, interleaved, for one batched model.

A *streams file* is a ``.txt`` file with one stream per line: a URL (anything with ``://``) or a
webcam index, optionally followed by a name (``rtsp://10.0.0.5/live  gate``); blank lines and
``#`` comments are skipped. :func:`is_streams_file` tells it from a ``.txt`` list of image paths:
a ``.txt`` with any URL line is a streams file (an image list holds no URLs), as is one whose every
line is a webcam index; a streams file with a line that is neither is refused in one line naming
that line (:func:`read_streams_file`), never read as an image list of streams "not found".

:class:`MultiSource` gives each stream its own :class:`~cvapps.io.sources.live.StreamSource` (its
own reader thread, keep-newest slot, FFmpeg timeouts and reconnect-with-backoff), opened in its
own *pump* thread, so a camera that is slow to open, stalls or dies holds up nobody else. The pump
moves each new frame into the camera's slot (one frame: the newest, unless ``buffer=True``); the
merge thread (this source's reader) takes, round by round, the waiting frame of every camera that
has one and queues them in turn. The queue holds one round, so while the model is busy the slots
keep being refreshed and each round carries every camera's newest frame. The predictor batches
what it reads, so one forward pass holds frames of several cameras.

Frames keep their stream's name in ``Frame.stream`` (and ``frame_index``), so every per-camera
output (a video per stream, a tracker per stream) can tell them apart; all streams share one clock
(``timestamp``: seconds since the MultiSource was made). Outages are gap events (see
:mod:`cvapps.io.sources.live`), collected by :meth:`MultiSource.take_events`. A stream that cannot
be opened, or ends with an error, is reported in ``skipped`` and the others go on; the run fails
only when no stream ever delivered a frame.
"""

from __future__ import annotations

import collections
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvapps.errors import CvappsError, shorten
from cvapps.formats.names import stream_stem
from cvapps.io.sources.base import CaptureFactory, Source
from cvapps.io.sources.live import StreamSource, WebcamSource, is_url, redact_url
from cvapps.io.sources.options import SourceOptions
from cvapps.structures import Frame
from cvapps.threads import POLL_S

_MAX_LIST_BYTES = 1 << 20  # a streams file is a short list; anything larger is an image list
_JOIN_S = 2.0  # close waits at most this long for all pump threads together


@dataclass(frozen=True)
class StreamSpec:
    """One stream of a streams file. target: URL or webcam index; name: what frames and events
    call it (the URL with any password hidden, ``webcamN``, or the name given); stem: its output
    files' name (``OUT/<stem>.mp4``, :func:`~cvapps.formats.names.stream_stem`), unique within the list."""

    target: str | int
    name: str
    stem: str


def _entries(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield number, line


def _target(text: str) -> str | int | None:
    """A URL, or a webcam index as int; None for anything else (a file path)."""
    if is_url(text):
        return text
    return int(text) if re.fullmatch(r"\d+", text) else None


def is_streams_file(spec: Any) -> bool:
    """True when ``spec`` is a ``.txt`` file with any entry starting with a URL, or whose every entry
    is a webcam index (see the module doc)."""
    if isinstance(spec, bool) or not isinstance(spec, (str, os.PathLike)):
        return False
    path = Path(os.path.expanduser(os.fspath(spec)))
    try:
        if path.suffix.lower() != ".txt" or not path.is_file() or path.stat().st_size > _MAX_LIST_BYTES:
            return False
        firsts = [line.split()[0] for _, line in _entries(path)]
    except (OSError, ValueError):
        return False  # the image-list reader reports an unreadable file
    return any(is_url(first) for first in firsts) or (bool(firsts) and all(_target(f) is not None for f in firsts))


def read_streams_file(path: str | os.PathLike[str]) -> list[StreamSpec]:
    """The streams of a streams file (see the module doc); a bad line is a one-line error."""
    path = Path(os.path.expanduser(os.fspath(path)))
    specs: list[StreamSpec] = []
    seen_targets: set[str | int] = set()
    stems: set[str] = set()
    try:
        entries = list(_entries(path))
    except OSError as exc:
        raise CvappsError(f"cannot read streams file {path}: {exc.strerror or exc}") from None
    for number, line in entries:
        fields = line.split(maxsplit=1)
        target = _target(fields[0])
        if target is None:
            raise CvappsError(f"{path}:{number}: expected a stream URL or webcam index, got {shorten(fields[0])} "
                              "(a .txt with stream URLs is a streams file: list image paths in another file)")
        if target in seen_targets:
            raise CvappsError(f"{path}:{number}: {shorten(redact_url(str(target)))} is listed twice")
        seen_targets.add(target)
        name = fields[1].strip() if len(fields) > 1 else (
            f"webcam{target}" if isinstance(target, int) else redact_url(target))
        stem = base = stream_stem(name)
        k = 2
        while stem in stems:  # two cameras whose names sanitise alike still get their own files
            stem, k = f"{base}_{k}", k + 1
        stems.add(stem)
        specs.append(StreamSpec(target, name, stem))
    if not specs:
        raise CvappsError(f"streams file {path} lists no stream")
    if len({s.name for s in specs}) != len(specs):
        raise CvappsError(f"streams file {path}: two streams have the same name")
    return specs


class _Camera:
    """One stream's state, shared by its pump thread and the merge thread (under the condition)."""

    def __init__(self, spec: StreamSpec, capacity: int) -> None:
        self.spec = spec
        self.capacity = capacity
        self.pending: collections.deque[Frame] = collections.deque()
        self.source: StreamSource | None = None
        self.done = False
        self.dropped = 0
        self.thread: threading.Thread | None = None


class MultiSource(Source):
    """The frames of several live streams, interleaved (see the module doc).

    ``specs``: from :func:`read_streams_file`. ``options`` (a
    :class:`~cvapps.io.sources.options.SourceOptions`, default its defaults): ``buffer``: keep every
    frame of each stream (up to ``queue_size`` per stream; the pump then waits, and the stream's
    own bounded queue with it) instead of only the newest; these options and ``capture_factory``
    apply to every stream as in :class:`StreamSource`. ``stems`` maps each
    stream name to its output stem; :meth:`stream_of` gives a frame's stream name.
    """

    is_live = True

    def __init__(self, specs: Sequence[StreamSpec], options: SourceOptions | None = None, *,
                 name: str = "streams", capture_factory: CaptureFactory | None = None) -> None:
        if not specs:
            raise CvappsError("no streams to read")
        opts = options if options is not None else SourceOptions()
        # One round of frames queued ahead: a busy model gets the newest frames, not old rounds.
        super().__init__(name, queue_size=len(specs))
        self.vid_stride = opts.vid_stride
        self.stems: dict[str, str] = {spec.name: spec.stem for spec in specs}
        self._options = opts
        self._stream_kwargs: dict[str, Any] = dict(
            capture_factory=capture_factory, t0=time.monotonic(),
            explain=False)  # FFmpeg's reason is read by redirecting fd 2: not from parallel threads
        self._cameras = [_Camera(spec, opts.queue_size if opts.buffer else 1) for spec in specs]
        self._keep_all = bool(opts.buffer)
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._closing = threading.Event()  # set on release: pumps stop (not the merge queue's own stop)
        self._release_lock = threading.Lock()
        self._released = False
        self.delivered = 0

    # -- what sinks ask -----------------------------------------------------------------------------
    def stream_of(self, frame: Frame) -> str:
        """The name of the stream ``frame`` came from."""
        return frame.stream

    def stream_fps(self, name: str) -> float | None:
        """The frame rate stream ``name`` reports, once it is open (else None)."""
        for cam in self._cameras:
            if cam.spec.name == name and cam.source is not None:
                return cam.source.fps
        return None

    @property
    def dropped(self) -> int:
        return sum(cam.dropped + (cam.source.dropped if cam.source is not None else 0) for cam in self._cameras)

    def take_events(self) -> list[dict[str, Any]]:
        """Gap events of every stream recorded since the last call."""
        return [event for cam in self._cameras if cam.source is not None for event in cam.source.take_events()]

    # -- pumps: one per stream -----------------------------------------------------------------------
    def _open(self, spec: StreamSpec) -> StreamSource:
        if isinstance(spec.target, int):
            return WebcamSource(spec.target, self._options, name=spec.name, **self._stream_kwargs)
        return StreamSource(spec.target, self._options, name=spec.name, **self._stream_kwargs)

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._closing.is_set()

    def _pump(self, cam: _Camera) -> None:
        """Open the stream (with its own retries) and move its frames into the camera's slot."""
        try:
            source = self._open(cam.spec)
            with self._cond:
                cam.source = source
            if self._stopping():
                return
            for frame in source:
                with self._cond:
                    while self._keep_all and len(cam.pending) >= cam.capacity and not self._stopping():
                        self._cond.wait(POLL_S)
                    if len(cam.pending) >= cam.capacity:  # keep-newest: the waiting frame is stale
                        cam.pending.popleft()
                        cam.dropped += 1
                    cam.pending.append(frame)
                    self._cond.notify_all()
                if self._stopping():
                    return
        except CvappsError as exc:  # this stream is out; the others go on
            self.skipped.append((cam.spec.name, str(exc)))
        except BaseException as exc:  # noqa: BLE001 - a bug: the merge thread re-raises it
            self._error = exc
        finally:
            if cam.source is not None:
                cam.source.close()
            with self._cond:
                cam.done = True
                self._cond.notify_all()

    # -- merge thread -------------------------------------------------------------------------------
    def _produce(self) -> Iterator[Frame]:
        for cam in self._cameras:
            cam.thread = threading.Thread(target=self._pump, args=(cam,), daemon=True,
                                          name=f"cvapps-stream:{cam.spec.stem}")
            cam.thread.start()
        turn = 0
        while not self._stop.is_set():
            with self._cond:
                while not (self._stop.is_set() or self._error is not None or any(cam.pending for cam in self._cameras)
                           or all(cam.done for cam in self._cameras)):
                    self._cond.wait(POLL_S)
                # Start each round with the next camera, so no stream always waits for the others.
                order = self._cameras[turn:] + self._cameras[:turn]
                turn = (turn + 1) % len(self._cameras)
                round_ = [cam.pending.popleft() for cam in order if cam.pending]
                finished = not round_ and all(cam.done for cam in self._cameras)
                self._cond.notify_all()  # buffering pumps wait for room
            if self._error is not None:
                raise self._error
            if finished:
                break
            self.delivered += len(round_)
            yield from round_
        if self.delivered == 0 and not self._stop.is_set():
            why = "; ".join(reason for _, reason in self.skipped[:3])
            raise CvappsError(f"none of the {len(self._cameras)} streams delivered a frame" + (f": {why}" if why else ""))

    def _release(self) -> None:
        """Stop every stream and wait (at most ~2 s in all) for the pumps. Idempotent; a second
        caller waits for the first (the merge thread and close() may both call it)."""
        with self._release_lock:
            if self._released:
                return
            self._released = True
            # Not self._stop: after a natural end the last round may still be queued for the consumer.
            self._closing.set()
            for cam in self._cameras:
                if cam.source is not None:
                    cam.source.request_stop()
            deadline = time.monotonic() + _JOIN_S
            for cam in self._cameras:
                if cam.thread is not None and cam.thread is not threading.current_thread():
                    cam.thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop the merge thread and every stream, waiting for them (a few seconds at most)."""
        super().close()
        self._release()
