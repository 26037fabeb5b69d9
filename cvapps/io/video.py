"""File sinks for frame streams: annotated mp4, per-frame JSON lines, COCO JSON with one image per frame.

Every writer keeps its output valid when a run is interrupted: the runner always calls ``close()``
(also after Ctrl-C/SIGTERM), and each writer only then moves a complete file into place. The mp4
is written by OpenCV's ``VideoWriter`` (fourcc ``mp4v``, which every OpenCV build with FFmpeg
can encode and common players decode) under a hidden temporary name in the same folder and
renamed on close, so a player never sees a file without its index (moov atom).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from cvapps.checkpoint import atomic_write_text
from cvapps.errors import CvappsError
from cvapps.io.sinks import Draw, frame_file_name, prediction_to_json
from cvapps.structures import Classification, Detections, Frame, SegmentationMask

DEFAULT_FPS = 25.0  # for sources that do not report a frame rate (image folders, some streams)


class VideoWriterSink:
    """Annotated video: every frame drawn with ``draw(image, prediction)`` into one mp4.

    fps: the input's frame rate (from ``start(source)``; divided by ``vid_stride`` so the video
    keeps real-time duration), else ``fps`` given here, else 25. Size: the first frame's size;
    frames of another size (a folder of mixed images) are resized to it.
    """

    def __init__(self, path: str | Path, draw: Draw, fps: float | None = None, fourcc: str = "mp4v") -> None:
        self.path, self.draw, self.fps, self.fourcc = Path(path), draw, fps, fourcc
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._tmp = self.path.parent / f".{self.path.stem}.{uuid.uuid4().hex[:8]}.tmp{self.path.suffix or '.mp4'}"

    def start(self, source: Any) -> None:
        if self.fps is None and getattr(source, "fps", None):
            self.fps = float(source.fps) / max(1, int(getattr(source, "vid_stride", 1) or 1))

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (width, height)
        writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps or DEFAULT_FPS,
                                 self.size)
        if not writer.isOpened():
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

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return  # no frames: no file (an empty mp4 would not play)
        writer.release()  # writes the index; only now is the file playable
        os.replace(self._tmp, self.path)


class JsonLinesSink:
    """``predictions.jsonl``: one JSON object per frame, in order::

        {"source": "...", "file_name": "video.mp4#frame=000012", "index": 12, "timestamp": 0.5,
         "width": 320, "height": 240, "prediction": {...}}   # see sinks.prediction_to_json

    Lines are appended to a hidden temp file as they come (flushed, so memory stays flat) and the
    file is moved into place on close, so the final name only ever holds whole lines.
    """

    def __init__(self, path: str | Path, class_names: Sequence[str], root: str | Path | None = None) -> None:
        self.path, self.class_names, self.root = Path(path), list(class_names), root
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"
        self._fh = open(self._tmp, "w", encoding="utf-8")
        self.lines = 0

    def write(self, frame: Frame, prediction: Any) -> None:
        h, w = frame.image.shape[:2]
        record = {"source": frame.source, "file_name": frame_file_name(frame.source, self.root),
                  "index": frame.index, "timestamp": round(frame.timestamp, 4), "width": w, "height": h,
                  "prediction": prediction_to_json(prediction, self.class_names)}
        self.write_record(record)

    def write_record(self, record: dict[str, Any]) -> None:
        """Append any JSON-serialisable dict as one line (for pipelines with their own records)."""
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        self.lines += 1

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)


class CocoFramesSink:
    """COCO JSON where each frame is an image (``file_name`` like ``video.mp4#frame=000123``; files
    under ``root`` by relative path) and each prediction becomes annotations:

    * Detections -> ``bbox`` [x, y, w, h] in original pixels, ``score``, ``category_id``, ``area``;
    * SegmentationMask -> one RLE annotation per class present (``segmentation`` {size, counts});
      the class index is the mask value (segmentation class lists start with background, id 0,
      which gets no annotation and no category);
    * Classification -> no annotation (a frame-level label is not a COCO object), images only.

    ``category_ids[i]`` is the COCO id of class i (default i + 1). Written atomically on close, so
    the file is complete even after an interrupted run; loadable by ``pycocotools.coco.COCO``.
    """

    def __init__(self, path: str | Path, class_names: Sequence[str], category_ids: Sequence[int] | None = None,
                 root: str | Path | None = None, info: dict[str, Any] | None = None) -> None:
        self.path, self.class_names, self.root = Path(path), list(class_names), root
        self.category_ids = list(category_ids) if category_ids else list(range(1, len(self.class_names) + 1))
        self.info = info or {"description": "cvapps predictions"}
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def write(self, frame: Frame, prediction: Any) -> None:
        h, w = frame.image.shape[:2]
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": frame_file_name(frame.source, self.root),
                            "width": w, "height": h, "frame_index": frame.index,
                            "timestamp": round(frame.timestamp, 4)})
        if isinstance(prediction, Detections):
            for (x1, y1, x2, y2), score, label in zip(prediction.boxes.tolist(), prediction.scores.tolist(),
                                                      prediction.labels.tolist()):
                bw, bh = max(0.0, x2 - x1), max(0.0, y2 - y1)
                self._add(image_id, label, {"bbox": [round(x1, 2), round(y1, 2), round(bw, 2), round(bh, 2)],
                                            "area": round(bw * bh, 2), "score": round(score, 5)})
        elif isinstance(prediction, SegmentationMask):
            from pycocotools import mask as mask_utils

            mask = np.asarray(prediction.mask)
            for value in np.unique(mask).tolist():
                if value in (0, 255):
                    continue
                rle = mask_utils.encode(np.asfortranarray(mask == value, dtype=np.uint8))
                bbox = [float(v) for v in mask_utils.toBbox(rle)]
                rle["counts"] = rle["counts"].decode("ascii")
                score = None
                if prediction.scores is not None and value < len(prediction.scores):
                    score = round(float(prediction.scores[value]), 5)
                extra = {"segmentation": rle, "bbox": bbox, "area": float(mask_utils.area(rle))}
                if score is not None:
                    extra["score"] = score
                self._add(image_id, value, extra)
        elif not isinstance(prediction, Classification):
            raise TypeError(f"cannot write a {type(prediction).__name__} prediction to COCO")

    def _add(self, image_id: int, label: int, fields: dict[str, Any]) -> None:
        category = self.category_ids[label] if 0 <= label < len(self.category_ids) else label + 1
        self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id,
                                 "category_id": category, "iscrowd": 0, **fields})

    def to_dict(self) -> dict[str, Any]:
        categories = [{"id": cid, "name": name, "supercategory": ""}
                      for cid, name in zip(self.category_ids, self.class_names)
                      if not (cid == 0 and name == "background")]
        return {"info": self.info, "images": self.images, "annotations": self.annotations,
                "categories": categories}

    def close(self) -> None:
        atomic_write_text(self.path, json.dumps(self.to_dict()))


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
