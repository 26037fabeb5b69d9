"""One image from a source, with its place in that source."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvapps.formats.names import frame_name


@dataclass
class Frame:
    """One image from a source.

    image: HxWx3 BGR uint8 (OpenCV order), EXIF orientation already applied.
    source: the frame's display name: a still image's path, ``"clip.mp4#frame=000123"`` for a
      video or stream frame (made by :meth:`of_video`; nothing parses it back: read ``stream`` and
      ``frame_index``).
    index: position in the source (frame number for video, file number for folders).
    timestamp: seconds since the start of the video/stream (0.0 for still images).
    stream: the video file, stream or camera name the frame comes from; for a still image its path
      (the default: ``source``). Per-video outputs (a tracker, a MOT file, an mp4 per stream) group by it.
    frame_index: the frame's number in ``stream`` for video and stream frames; None for still images.
    """

    image: np.ndarray
    source: str
    index: int = 0
    timestamp: float = 0.0
    stream: str = ""
    frame_index: int | None = None

    def __post_init__(self) -> None:
        if not self.stream:  # a still image is its own stream: its path
            self.stream = self.source

    @classmethod
    def of_video(cls, image: np.ndarray, stream: str, frame_index: int, timestamp: float) -> Frame:
        """Frame ``frame_index`` of video/stream ``stream`` (its ``index`` is the frame number too)."""
        return cls(image, frame_name(stream, frame_index), frame_index, timestamp, stream, frame_index)

    @property
    def is_video(self) -> bool:
        """True for a frame of a video, stream or camera (it has a ``frame_index``)."""
        return self.frame_index is not None
