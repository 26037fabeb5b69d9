"""Local video files as a source: every frame, in order, never dropped (stride and shard applied)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2

from cvapps.errors import CvappsError
from cvapps.io.sources.base import Capture, CaptureFactory, Source
from cvapps.structures import Frame


def fps_of(cap: Capture) -> float | None:
    """The capture's frame rate, or None when unknown (0, NaN, or nonsense such as 90000)."""
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if math.isfinite(fps) and 0.0 < fps < 1000.0 else None


def size_of(cap: Capture) -> tuple[int, int] | None:
    """The capture's frame size as (w, h), or None when unknown."""
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    return (w, h) if w > 0 and h > 0 else None


class VideoSource(Source):
    """Frames of a local video file; never drops frames (URLs are streams: see ``live.py``).

    ``index`` is the true frame number in the file; with ``vid_stride`` only frames with
    ``index % vid_stride == 0`` are yielded (the others are grabbed but not decoded).
    ``frame_count`` is the container's frame count (all frames, before striding), or None.
    """

    is_video = True

    def __init__(self, path: str, *, vid_stride: int = 1, queue_size: int = 64,
                 capture_factory: CaptureFactory | None = None, shard: tuple[int, int] | None = None) -> None:
        super().__init__(path, queue_size=queue_size, shard=shard)
        self.vid_stride = vid_stride
        factory = capture_factory or cv2.VideoCapture
        self._cap: Capture | None = factory(path)
        if not self._cap.isOpened():
            self._cap.release()
            self._cap = None
            raise CvappsError(f"cannot open video: {path}")
        self.fps = fps_of(self._cap)
        self.frame_size = size_of(self._cap)
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
