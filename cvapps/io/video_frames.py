"""The one video decode loop: frames of an open capture, by number, strided and sharded.

Used by :class:`~cvapps.io.sources.video.VideoSource` (a whole file, in one process) and by Ray's
read tasks (:mod:`cvapps.engine.ray_read`: a range of frames), so both number, skip and time frames
alike. This module imports neither torch nor the sources package, so a Ray read worker stays light.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np


def fps_of(cap: Any) -> float | None:
    """The capture's frame rate, or None when unknown (0, NaN, or nonsense such as 90000)."""
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if math.isfinite(fps) and 0.0 < fps < 1000.0 else None


def size_of(cap: Any) -> tuple[int, int] | None:
    """The capture's frame size as (w, h), or None when unknown."""
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    return (w, h) if w > 0 and h > 0 else None


def decode_frames(cap: Any, *, vid_stride: int = 1, shard: tuple[int, int] = (0, 1), start: int = 0,
                  end: int = -1, stop: threading.Event | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(frame number, timestamp s, image)`` of frames ``start <= number < end`` (``end`` -1: to the
    end of the file) with ``number % vid_stride == 0`` and whose strided position ``number //
    vid_stride`` falls in ``shard`` ``(i, n)``. Frames nobody will see are grabbed, never decoded.

    The timestamp is ``number / fps`` (the container's rate), else the capture's position. The loop
    ends at the end of the file, at an undecodable frame (OpenCV reports both alike) or once
    ``stop`` is set. ``start`` > 0 seeks first (``cap.set``).
    """
    fps = fps_of(cap)
    if start > 0:
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    i, n = shard
    index = start
    while (end < 0 or index < end) and not (stop is not None and stop.is_set()):
        if index % vid_stride or (index // vid_stride) % n != i:
            if not cap.grab():  # skips the decode of a frame nobody will see
                return
            index += 1
            continue
        ok, image = cap.read()
        if not ok or image is None:
            return
        ts = index / fps if fps else float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
        yield index, ts, image
        index += 1
