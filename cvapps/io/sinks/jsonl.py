"""``predictions.jsonl``: one JSON object per frame, in order::

    {"source": "...", "file_name": "video.mp4#frame=000012", "index": 12, "timestamp": 0.5,
     "width": 320, "height": 240, "prediction": {...}}   # see prediction_to_json

Lines are appended to a hidden temp file as they come (flushed, so memory stays flat) and the file
is moved into place on commit, so the final name only ever holds whole lines. Names that are not
valid UTF-8 are written escaped (:func:`cvapps.formats.names.safe_name`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cvapps.formats.names import frame_file_name, safe_name
from cvapps.io.sinks.base import StagedSink, open_temp
from cvapps.structures import Classification, Detections, Frame, SegmentationMask


def prediction_to_json(prediction: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """A JSON-ready dict for one prediction.

    Detections -> {"boxes": [[x1, y1, x2, y2], ...] (original pixels), "scores", "labels", "names"},
    plus "mask_areas" (pixels per instance mask) when the model gives masks (the masks themselves go
    to COCO RLE), "track_ids" (parallel to "boxes") when tracked and "counts" ({"lines": [{"line",
    "in", "out", "classes"}], "zones": [{"zone", "count", "classes"}]}: line totals so far and zone
    occupancy in this frame) when counting;
    SegmentationMask -> {"classes": {name: pixel count}} (class index = mask value; the mask itself
    goes to COCO RLE / PNG);
    Classification -> {"label", "name", "score", "topk": [[label, score], ...]}.
    """
    name = lambda i: class_names[i] if 0 <= i < len(class_names) else str(i)  # noqa: E731
    if isinstance(prediction, Detections):
        labels = prediction.labels.tolist()
        out = {"boxes": [[round(v, 2) for v in b] for b in prediction.boxes.tolist()],
               "scores": [round(s, 4) for s in prediction.scores.tolist()],
               "labels": labels, "names": [name(i) for i in labels]}
        if prediction.masks is not None:
            out["mask_areas"] = [int(a) for a in prediction.masks.flatten(1).sum(1).tolist()]
        if prediction.track_ids is not None:
            out["track_ids"] = prediction.track_ids.tolist()
        if prediction.counts is not None:
            out["counts"] = prediction.counts.to_json()
        return out
    if isinstance(prediction, SegmentationMask):
        values, counts = np.unique(np.asarray(prediction.mask), return_counts=True)
        return {"classes": {("ignore" if v == 255 else name(int(v))): int(c)
                            for v, c in zip(values.tolist(), counts.tolist())}}
    if isinstance(prediction, Classification):
        return {"label": prediction.label, "name": name(prediction.label), "score": round(prediction.score, 4),
                "topk": [[int(i), round(float(s), 4)] for i, s in prediction.topk]}
    raise TypeError(f"cannot serialise a {type(prediction).__name__} prediction")


class JsonLinesSink(StagedSink):
    def __init__(self, path: str | Path, class_names: Sequence[str], root: str | Path | None = None) -> None:
        super().__init__()
        self.path, self.class_names, self.root = Path(path), list(class_names), root
        self._tmp, self._fh = open_temp(self.path)
        self.lines = 0

    def write(self, frame: Frame, prediction: Any) -> None:
        h, w = frame.image.shape[:2]
        record = {"source": safe_name(frame.source), "file_name": frame_file_name(frame.source, self.root),
                  "index": frame.index, "timestamp": round(frame.timestamp, 4), "width": w, "height": h,
                  "prediction": prediction_to_json(prediction, self.class_names)}
        self.write_record(record)

    def write_record(self, record: dict[str, Any]) -> None:
        """Append any JSON-serialisable dict as one line (for pipelines with their own records)."""
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        self.lines += 1

    @property
    def targets(self) -> list[Path]:
        return [self.path]

    def prepare(self) -> None:
        if not self._fh.closed:
            self.stage_file(self._tmp, self.path)
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            finally:
                self._fh.close()

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        super().discard()
        self._tmp.unlink(missing_ok=True)
