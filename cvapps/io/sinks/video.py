"""Annotated video: every frame drawn with ``draw(image, prediction)`` into an MP4 a browser plays.

The video is H.264 (``libx264``, ``yuv420p``, CRF 23, preset ``veryfast``) in MP4 with the index
first (``movflags=+faststart``), written by PyAV (``pip install "cvapps[video]"``), so an HTML
``<video>`` element plays it, even while it downloads. Only when PyAV or its H.264 encoder is
missing does it fall back to OpenCV's ``mp4v`` (MPEG-4 Part 2, which browsers do not play), with a
one-line warning. Odd frame sizes are padded by one pixel (4:2:0 needs even sizes).

Frames of a file source get a constant frame rate; frames of a live source (a stream, a camera)
are placed at their own timestamps (1 ms time base), so the video runs in real time and an outage
is shown as the last frame held, never as invented frames.

The file is written as it comes (memory stays flat) under a hidden temporary name in the same
folder and moved into place on commit (:mod:`cvapps.io.sinks.base`), so a player never sees a
file without its index (moov atom); on close the file's box structure is checked too: a file cut
short (disk full, a file size limit) is an error, not an output.

:class:`VideoPerSource` writes one such video per stream of a many-camera source.
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cvapps.errors import CvappsError
from cvapps.formats.names import stream_stem
from cvapps.io.draw import Draw
from cvapps.io.safe_write import StagedFile, stage
from cvapps.io.sinks.base import StagedSink
from cvapps.structures import Frame

DEFAULT_FPS = 25.0  # for sources that do not report a frame rate (image folders, some streams)
H264_OPTIONS = {"preset": "veryfast", "crf": "23"}
#: libx264 threads: 1 on a machine with few cores, where its frame threads take CPU from the model's
#: (measured, 2 cores, 320x240: 1.20 CPU-ms per frame with 1 thread against 1.56 with x264's own choice,
#: the same size; benchmarks/pipeline_overhead.py video 0.82 -> 0.89); 0 (x264 decides) above.
X264_THREADS = 1 if (os.cpu_count() or 1) <= 4 else 0
_LIVE_TIME_BASE = Fraction(1, 1000)  # live frames are placed at their timestamps, to the millisecond
_warned: list[str] = []


def h264_unavailable() -> str | None:
    """Why H.264 cannot be written here (no PyAV, or its FFmpeg lacks libx264), or None when it can."""
    try:
        import av  # optional (the "video" extra), so imported where used
    except ImportError:
        return 'PyAV is not installed (pip install "cvapps[video]")'
    try:
        av.codec.Codec("libx264", "w")
    except (ValueError, av.error.FFmpegError):
        return "PyAV's FFmpeg has no H.264 encoder (libx264)"
    return None


class _AvEncoder:
    """H.264/MP4 through PyAV; ``pts`` in ``time_base`` units."""

    def __init__(self, path: str, size: tuple[int, int], fps: float, live: bool) -> None:
        import av  # optional; h264_unavailable() checked it

        self._av = av
        rate = Fraction(fps).limit_denominator(1001)
        self.time_base = _LIVE_TIME_BASE if live else 1 / rate
        self.container = av.open(path, "w", format="mp4", options={"movflags": "+faststart"})
        self.stream = self.container.add_stream("libx264", rate=rate, options=dict(H264_OPTIONS))
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = self.time_base
        self.stream.codec_context.thread_count = X264_THREADS

    def write(self, image: np.ndarray, pts: int) -> None:
        frame = self._av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, self.time_base
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))  # flush the encoder's delayed frames
        finally:
            self.container.close()  # writes the index (moved to the front: +faststart)


class _CvEncoder:
    """The fallback: OpenCV's mp4v (constant frame rate; timestamps are not kept)."""

    def __init__(self, path: str, size: tuple[int, int], fps: float, shown: Path) -> None:
        self.writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise CvappsError(f"cannot write video {shown}: OpenCV has no 'mp4v' encoder either")

    def write(self, image: np.ndarray, pts: int) -> None:
        self.writer.write(image)

    def close(self) -> None:
        self.writer.release()


def _even(image: np.ndarray) -> np.ndarray:
    """Pad an odd width or height by one edge pixel (yuv420p halves both)."""
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        image = cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
    return image


class VideoWriterSink(StagedSink):
    """One annotated MP4 (see the module doc).

    fps: the input's frame rate (from ``start(source)``; divided by ``vid_stride`` so the video
    keeps real-time duration), else ``fps`` given here, else 25. live: place frames at their
    timestamps (None: from ``start(source)``, true for live sources). codec: ``"h264"`` (falls
    back to ``"mp4v"`` with a warning when PyAV cannot) or ``"mp4v"``. Size: the first frame's
    (odd sizes padded to even); frames of another size (a folder of mixed images) are resized to it.
    """

    def __init__(self, path: str | Path, draw: Draw, fps: float | None = None, codec: str = "h264",
                 live: bool | None = None) -> None:
        super().__init__()
        if codec not in ("h264", "mp4v"):
            raise CvappsError(f"video codec must be h264 or mp4v, got {codec!r}")
        self.path, self.draw, self.fps, self.codec, self.live = Path(path), draw, fps, codec, live
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._encoder: _AvEncoder | _CvEncoder | None = None
        self._tmp: StagedFile | None = None  # staged at the first frame (no frames: no file)
        self._t_first = 0.0
        self._last_pts = -1

    def start(self, source: Any) -> None:
        if self.fps is None and getattr(source, "fps", None):
            self.fps = float(source.fps) / max(1, int(getattr(source, "vid_stride", 1) or 1))
        if self.live is None:
            self.live = bool(getattr(source, "is_live", False))

    def _open(self, width: int, height: int) -> None:
        self.size = (width, height)
        fps = self.fps or DEFAULT_FPS
        why = h264_unavailable() if self.codec == "h264" else None
        if why is not None:
            self.codec = "mp4v"
            if why not in _warned:  # once per process, not once per camera
                _warned.append(why)
                print(f"warning: {why}; writing mp4v video, which web browsers do not play", file=sys.stderr)
        # the encoders open the staged temp file by its /proc/self/fd path (the suffix picks the container)
        self._tmp = stage(self.path, suffix=self.path.suffix or ".mp4")
        try:
            if self.codec == "h264":
                self._encoder = _AvEncoder(self._tmp.writer_path, self.size, fps, bool(self.live))
            else:
                self._encoder = _CvEncoder(self._tmp.writer_path, self.size, fps, self.path)
        except BaseException:
            self._tmp.discard()
            raise

    def _pts(self, frame: Frame) -> int:
        """Frame count (constant rate), or milliseconds since the first frame (live), always increasing."""
        if not self.live:
            pts = self.frames
        else:
            if self.frames == 0:
                self._t_first = frame.timestamp
            pts = max(self._last_pts + 1, round((frame.timestamp - self._t_first) * 1000))
        self._last_pts = pts
        return pts

    def write(self, frame: Frame, prediction: Any) -> None:
        image = _even(self.draw(frame.image, prediction))
        h, w = image.shape[:2]
        if self._encoder is None:
            self._open(w, h)
        elif (w, h) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        assert self._encoder is not None
        self._encoder.write(np.ascontiguousarray(image), self._pts(frame))
        self.frames += 1

    @property
    def targets(self) -> list[Path]:
        return [self.path] if self.frames else []  # no frames: no file (an empty mp4 would not play)

    def prepare(self) -> None:
        encoder, self._encoder = self._encoder, None
        if encoder is None:
            return  # no frames: no file (an empty mp4 would not play)
        assert self._tmp is not None
        self.stage_file(self._tmp)
        encoder.close()  # writes the index; only now is the file playable
        if not _mp4_complete(self._tmp.writer_path, self.path.suffix or ".mp4"):
            raise CvappsError(f"{self.path}: the video file was cut short (disk full or a file size limit?)")

    def discard(self) -> None:
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            try:
                encoder.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away anyway
                pass
        super().discard()
        if self._tmp is not None:
            self._tmp.discard()


class VideoPerSource(StagedSink):
    """``OUT_DIR/<stem>.mp4`` per stream of a many-stream source (:class:`~cvapps.io.sources.MultiSource`:
    its ``stems``, ``stream_of`` and ``stream_fps`` name and time each video); every video is a
    live :class:`VideoWriterSink`. Without such a source each video is named after its frames'
    ``stream``. All the videos are committed together, or none."""

    def __init__(self, out_dir: str | Path, draw: Draw, codec: str = "h264") -> None:
        super().__init__()
        self.out_dir, self.draw, self.codec = Path(out_dir), draw, codec
        self.sinks: dict[str, VideoWriterSink] = {}
        self._source: Any = None

    def start(self, source: Any) -> None:
        self._source = source

    def _stream(self, frame: Frame) -> str:
        stream_of = getattr(self._source, "stream_of", None)
        if callable(stream_of):
            return stream_of(frame)
        return frame.stream

    def write(self, frame: Frame, prediction: Any) -> None:
        name = self._stream(frame)
        sink = self.sinks.get(name)
        if sink is None:
            stems = getattr(self._source, "stems", None) or {}
            stem = stems.get(name) or stream_stem(name)
            fps_of = getattr(self._source, "stream_fps", None)
            sink = VideoWriterSink(self.out_dir / f"{stem}.mp4", self.draw, fps=fps_of(name) if callable(fps_of) else None,
                                   codec=self.codec, live=True)
            self.sinks[name] = sink
        sink.write(frame, prediction)

    @property
    def paths(self) -> list[Path]:
        return [sink.path for sink in self.sinks.values()]

    @property
    def targets(self) -> list[Path]:
        return [path for sink in self.sinks.values() for path in sink.targets]

    def prepare(self) -> None:
        for sink in self.sinks.values():
            sink.prepare()

    def commit(self) -> None:
        for sink in self.sinks.values():
            sink.commit()

    def discard(self) -> None:
        for sink in self.sinks.values():
            sink.discard()


def _mp4_complete(path: str | Path, suffix: str | None = None) -> bool:
    """True when the MP4/MOV box structure is whole: top-level boxes fill the file exactly and include
    ``moov`` (the index, written last). Other containers (by ``suffix``, default the path's) are not checked."""
    if (suffix or Path(path).suffix).lower() not in (".mp4", ".mov", ".m4v"):
        return True
    size, pos, boxes = os.stat(path).st_size, 0, set()
    with open(path, "rb") as fh:
        while pos < size:
            fh.seek(pos)
            head = fh.read(16)
            if len(head) < 8:
                return False
            length, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if length == 1 and len(head) == 16:  # 64-bit size
                length = int.from_bytes(head[8:16], "big")
            elif length == 0:  # box runs to the end of the file
                length = size - pos
            if length < 8:
                return False
            boxes.add(kind)
            pos += length
    return pos == size and b"moov" in boxes


def count_video_frames(path: str | Path) -> int:
    """Frames a video file really decodes to (reads them all; the header count can be wrong)."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise CvappsError(f"cannot open video: {path}")
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()
