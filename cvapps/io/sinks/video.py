"""Annotated mp4: every frame drawn with ``draw(image, prediction)`` into one video file.

The mp4 is written by OpenCV's ``VideoWriter`` (fourcc ``mp4v``, which every OpenCV build with FFmpeg
can encode and common players decode) under a hidden temporary name in the same folder and moved
into place on commit (:mod:`cvapps.io.sinks.base`), so a player never sees a file without its index
(moov atom). OpenCV does not report failed writes, so on close the file's box structure is checked: a file cut
short (disk full, a file size limit) is an error, not an output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cvapps.errors import CvappsError
from cvapps.io.draw import Draw
from cvapps.io.sinks.base import StagedSink, temp_path
from cvapps.structures import Frame

DEFAULT_FPS = 25.0  # for sources that do not report a frame rate (image folders, some streams)


class VideoWriterSink(StagedSink):
    """fps: the input's frame rate (from ``start(source)``; divided by ``vid_stride`` so the video
    keeps real-time duration), else ``fps`` given here, else 25. Size: the first frame's size;
    frames of another size (a folder of mixed images) are resized to it."""

    def __init__(self, path: str | Path, draw: Draw, fps: float | None = None, fourcc: str = "mp4v") -> None:
        super().__init__()
        self.path, self.draw, self.fps, self.fourcc = Path(path), draw, fps, fourcc
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._tmp = temp_path(self.path).with_suffix(self.path.suffix or ".mp4")

    def start(self, source: Any) -> None:
        if self.fps is None and getattr(source, "fps", None):
            self.fps = float(source.fps) / max(1, int(getattr(source, "vid_stride", 1) or 1))

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (width, height)
        writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps or DEFAULT_FPS,
                                 self.size)
        if not writer.isOpened():
            self._tmp.unlink(missing_ok=True)
            raise CvappsError(f"cannot write video {self.path}: OpenCV has no {self.fourcc!r} encoder")
        self._writer = writer

    def write(self, frame: Frame, prediction: Any) -> None:
        image = self.draw(frame.image, prediction)
        h, w = image.shape[:2]
        if self._writer is None:
            self._open(w, h)
        elif (w, h) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        assert self._writer is not None
        self._writer.write(np.ascontiguousarray(image))
        self.frames += 1

    @property
    def targets(self) -> list[Path]:
        return [self.path] if self.frames else []  # no frames: no file (an empty mp4 would not play)

    def prepare(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return  # no frames: no file (an empty mp4 would not play)
        writer.release()  # writes the index; only now is the file playable
        self.stage_file(self._tmp, self.path)
        if not _mp4_complete(self._tmp):
            raise CvappsError(f"{self.path}: the video file was cut short (disk full or a file size limit?)")

    def discard(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
        super().discard()
        self._tmp.unlink(missing_ok=True)


def _mp4_complete(path: Path) -> bool:
    """True when the MP4/MOV box structure is whole: top-level boxes fill the file exactly and include
    ``moov`` (the index, written last). Other containers are not checked."""
    if path.suffix.lower() not in (".mp4", ".mov", ".m4v"):
        return True
    size, pos, boxes = path.stat().st_size, 0, set()
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
