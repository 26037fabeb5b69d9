"""The read step of :mod:`cvapps.engine.ray_predict`, run in Ray's read tasks: plan rows -> decoded frames.

Rows that flow through the Ray Dataset (one column each; numpy batches):

* plan rows (:func:`item_rows`): ``key`` (the item's manifest key), ``order`` (its place in the
  source's order), ``kind`` (``"image"`` or ``"video"``), ``path``, ``start`` / ``end`` (the video
  frame range, ``end`` -1 meaning to the end of the file);
* decoded rows (:func:`decode_items`, one per frame): ``key``, ``order``, ``count`` (rows its item
  yields), ``status`` (``"frame"``; ``"skip"`` for an unreadable file, reason in ``source``;
  ``"empty"`` for a video range past the last frame), ``source`` (the frame's name, as the
  single-process sources name it), ``stream`` (the video, or the image's path), ``frame_index``
  (the frame's number in its video; -1 for a still image), ``index``, ``timestamp``, ``image``
  (HxWx3 BGR uint8);
* predicted rows (:class:`cvapps.engine.ray_workers.PredictActor`): the same without ``image``, plus
  ``width``, ``height`` and ``prediction`` (JSON of :func:`cvapps.engine.manifest.encode_prediction`).

Images are read with :func:`cvapps.io.images.read_image` (so bad files are skipped with the same
reason as a single-process run) and videos with OpenCV, as :class:`~cvapps.io.sources.VideoSource`
reads them (the one decode loop, :func:`cvapps.io.video_frames.decode_frames`), seeking to the
range's first frame. This module imports neither torch nor the sources package (which does), so a
read worker starts in a fraction of a second.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from cvapps.errors import ImageReadError
from cvapps.formats.names import frame_name
from cvapps.io.images import read_image, set_max_file_mb
from cvapps.io.video_frames import decode_frames

_NO_IMAGE = np.zeros((1, 1, 3), np.uint8)  # placeholder pixels of rows that carry no frame


# (source, stream, frame_index (-1: a still image), timestamp, image) of one decoded row
_Decoded = tuple[str, str, int, float, np.ndarray]


def video_frames(path: str, start: int, end: int,
                 vid_stride: int = 1) -> Iterator[tuple[str, int, float, np.ndarray]]:
    """``(name, index, timestamp, image)`` of frames ``start <= index < end`` (``end`` -1: to the
    end) of a video, keeping ``index % vid_stride == 0``, named and timed as
    :class:`~cvapps.io.sources.VideoSource` names and times them."""
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise ImageReadError(path, "cannot open video")
        for index, ts, image in decode_frames(cap, vid_stride=vid_stride, start=start, end=end):
            yield frame_name(path, index), index, ts, image
    finally:
        cap.release()


def _rows(key: str, order: int, status: str, frames: list[_Decoded]) -> dict[str, Any]:
    n = len(frames)
    images = np.empty(n, dtype=object)
    images[:] = [f[4] for f in frames]
    index = np.array([max(f[2], 0) for f in frames], np.int64)  # a still image: 0 (its place comes later)
    return {"key": np.array([key] * n, dtype=object), "order": np.full(n, order, np.int64),
            "count": np.full(n, n, np.int64), "status": np.array([status] * n, dtype=object),
            "source": np.array([f[0] for f in frames], dtype=object),
            "stream": np.array([f[1] for f in frames], dtype=object),
            "frame_index": np.array([f[2] for f in frames], np.int64), "index": index,
            "timestamp": np.array([f[3] for f in frames], np.float64), "image": images}


def decode_items(batch: dict[str, np.ndarray], vid_stride: int = 1,
                 max_file_mb: float | None = None) -> Iterator[dict[str, Any]]:
    """Plan rows -> decoded frame rows (one output batch per item, so a video range streams on
    as soon as it is read). Unreadable files become one ``"skip"`` row."""
    set_max_file_mb(max_file_mb)  # the driver's --max-file-mb, in this worker process
    for key, order, kind, path, start, end in zip(batch["key"], batch["order"], batch["kind"], batch["path"],
                                                 batch["start"], batch["end"]):
        key, path, order = str(key), str(path), int(order)
        try:
            if kind == "image":
                frames = [(path, path, -1, 0.0, read_image(path))]
            else:
                frames = [(name, path, index, ts, image)  # a video frame's stream: its video
                          for name, index, ts, image in video_frames(path, int(start), int(end), vid_stride)]
        except ImageReadError as exc:
            yield _rows(key, order, "skip", [(exc.reason, "", -1, 0.0, _NO_IMAGE)])
            continue
        status = "frame" if frames else "empty"  # empty: a video range past the last frame
        yield _rows(key, order, status, frames or [("", "", -1, 0.0, _NO_IMAGE)])


def item_rows(items: list[Any]) -> list[dict[str, Any]]:
    """Plan items (:class:`cvapps.engine.ray_plan.Item`) -> rows for ``ray.data.from_items``."""
    return [{"key": it.key, "order": it.order, "kind": it.kind, "path": os.fspath(it.path),
             "start": it.start, "end": it.end} for it in items]
