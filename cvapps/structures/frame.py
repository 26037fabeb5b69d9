"""One image from a source, with its place in that source."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    """One image from a source.

    image: HxWx3 BGR uint8 (OpenCV order), EXIF orientation already applied.
    source: file path, or ``"video.mp4#frame=000123"`` style name for video frames.
    index: position in the source (frame number for video, file number for folders).
    timestamp: seconds since the start of the video/stream (0.0 for still images).
    """

    image: np.ndarray
    source: str
    index: int = 0
    timestamp: float = 0.0
