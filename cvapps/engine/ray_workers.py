"""What runs on Ray's workers for :mod:`cvapps.engine.ray_predict`: the decode step and the predictor actor.

Rows that flow through the Ray Dataset (one column each; numpy batches):

* plan rows (:func:`item_rows`): ``key`` (the item's manifest key), ``order`` (its place in the
  source's order), ``kind`` (``"image"`` or ``"video"``), ``path``, ``start`` / ``end`` (the video
  frame range, ``end`` -1 meaning to the end of the file);
* decoded rows (:func:`decode_items`, one per frame): ``key``, ``order``, ``count`` (rows its item
  yields), ``status`` (``"frame"``; ``"skip"`` for an unreadable file, reason in ``source``;
  ``"empty"`` for a video range past the last frame), ``source`` (the frame's name, as the
  single-process sources name it), ``index``, ``timestamp``, ``image`` (HxWx3 BGR uint8);
* predicted rows (:class:`PredictActor`): the same without ``image``, plus ``width``, ``height`` and
  ``prediction`` (JSON of :func:`cvapps.engine.manifest.encode_prediction`).

Images are read with :func:`cvapps.io.images.read_image` (so bad files are skipped with the same
reason as a single-process run) and videos with OpenCV, as :class:`~cvapps.io.sources.VideoSource`
does, seeking to the range's first frame.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cvapps.engine.load import load_model
from cvapps.engine.manifest import encode_prediction
from cvapps.errors import ImageReadError
from cvapps.formats.names import frame_name
from cvapps.io.images import read_image, set_max_file_mb
from cvapps.io.sources.video import fps_of
from cvapps.structures import Frame

_NO_IMAGE = np.zeros((1, 1, 3), np.uint8)  # placeholder pixels of rows that carry no frame


def video_frames(path: str, start: int, end: int, vid_stride: int = 1) -> Iterator[Frame]:
    """Frames ``start <= index < end`` (``end`` -1: to the end) of a video, keeping ``index %
    vid_stride == 0``, named and timed as :class:`~cvapps.io.sources.VideoSource` names them."""
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise ImageReadError(path, "cannot open video")
        fps = fps_of(cap)
        if start > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        index = start
        while end < 0 or index < end:
            if index % vid_stride:
                if not cap.grab():
                    return
                index += 1
                continue
            ok, image = cap.read()
            if not ok or image is None:
                return
            ts = index / fps if fps else float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
            yield Frame(image=image, source=frame_name(path, index), index=index, timestamp=ts)
            index += 1
    finally:
        cap.release()


def _rows(key: str, order: int, status: str, frames: list[tuple[str, int, float, np.ndarray]]) -> dict[str, Any]:
    n = len(frames)
    images = np.empty(n, dtype=object)
    images[:] = [f[3] for f in frames]
    return {"key": np.array([key] * n, dtype=object), "order": np.full(n, order, np.int64),
            "count": np.full(n, n, np.int64), "status": np.array([status] * n, dtype=object),
            "source": np.array([f[0] for f in frames], dtype=object),
            "index": np.array([f[1] for f in frames], np.int64),
            "timestamp": np.array([f[2] for f in frames], np.float64), "image": images}


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
                frames = [(path, 0, 0.0, read_image(path))]
            else:
                frames = [(f.source, f.index, f.timestamp, f.image)
                          for f in video_frames(path, int(start), int(end), vid_stride)]
        except ImageReadError as exc:
            yield _rows(key, order, "skip", [(exc.reason, 0, 0.0, _NO_IMAGE)])
            continue
        yield _rows(key, order, "frame", frames) if frames else _rows(key, order, "empty", [("", 0, 0.0, _NO_IMAGE)])


class PredictActor:
    """One model load per actor: the weights arrive once through Ray's object store (``weights``:
    ``[ObjectRef of the file's bytes]``, or None for a model name the loader resolves itself), and
    the same :class:`~cvapps.engine.predict.Predictor` as a single-process run predicts each batch."""

    def __init__(self, weights: list[Any] | None, model: str, device: str = "auto", batch: int = 8,
                 trust: bool = False, options: dict[str, Any] | None = None) -> None:
        import ray  # lazy: optional heavy package (this module only runs inside Ray workers)

        self._tmp = None
        if weights is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cvapps-model-")
            local = Path(self._tmp.name) / Path(model).name  # same suffix: the loader dispatches on it
            local.write_bytes(ray.get(weights[0]))
            model = str(local)
        self.predictor = load_model(model, device=device, batch=batch, trust=trust).predictor()
        self.predictor.prefetch = 0  # Ray Data already overlaps reading with this actor's work
        self.options = dict(options or {})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["key"])
        is_frame = [batch["status"][i] == "frame" for i in range(n)]
        frames = [Frame(np.asarray(batch["image"][i]), str(batch["source"][i]), int(batch["index"][i]),
                        float(batch["timestamp"][i])) for i in range(n) if is_frame[i]]
        predictions = iter(p for _, p in self.predictor.predict(frames, **self.options))
        width, height, encoded = np.zeros(n, np.int64), np.zeros(n, np.int64), np.empty(n, dtype=object)
        for i in range(n):
            encoded[i] = ""
            if is_frame[i]:
                height[i], width[i] = np.asarray(batch["image"][i]).shape[:2]
                encoded[i] = json.dumps(encode_prediction(next(predictions)))
        out = {k: batch[k] for k in ("key", "order", "count", "status", "source", "index", "timestamp")}
        return {**out, "width": width, "height": height, "prediction": encoded}

    def __del__(self) -> None:
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()


def item_rows(items: list[Any]) -> list[dict[str, Any]]:
    """Plan items (:class:`cvapps.engine.ray_predict.Item`) -> rows for ``ray.data.from_items``."""
    return [{"key": it.key, "order": it.order, "kind": it.kind, "path": os.fspath(it.path),
             "start": it.start, "end": it.end} for it in items]
