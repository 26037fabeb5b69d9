"""Local video files as a source: every frame, in order, never dropped (stride and shard applied)."""

from __future__ import annotations

from collections.abc import Iterator

import cv2

from cvapps.errors import CvappsError
from cvapps.io.sources.base import Capture, CaptureFactory, Source
from cvapps.io.video_frames import decode_frames, fps_of, size_of
from cvapps.structures import Frame

__all__ = ["VideoSource", "fps_of", "size_of"]


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
        for index, ts, image in decode_frames(cap, vid_stride=self.vid_stride, shard=self.shard, stop=self._stop):
            yield Frame.of_video(image, self.name, index, ts)

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
