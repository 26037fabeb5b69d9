"""``predictions.jsonl``: one JSON object per frame, in order::

    {"source": "...", "file_name": "video.mp4#frame=000012", "index": 12, "timestamp": 0.5,
     "width": 320, "height": 240, "stream": "...", "prediction": {...}}   # see prediction_to_json

``source`` is the frame's full name (``<video or stream>#frame=<index>`` for video and stream frames,
else the image path); ``stream`` (video and stream frames only) is the video or stream it came from,
which tells the cameras of a many-stream run apart.

A live source's outages are lines of their own (from the source's ``take_events()``, see
:mod:`cvapps.io.sources.live`): ``{"event": "gap", "source": <stream>, "from": 12.3, "to": 15.9,
"seconds", "reconnected", "from_utc", "to_utc"}``, written just before that stream's first frame
after the gap (or at the end, for a stream that never came back); ``from``/``to`` are on the
frames' ``timestamp`` clock. Readers tell the two kinds of line apart by ``"event"``.

Lines are appended to a hidden temp file as they come (flushed, so memory stays flat) and the file
is moved into place on commit, so the final name only ever holds whole lines. Names that are not
valid UTF-8 are written escaped (:func:`cvapps.formats.names.safe_name`).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from cvapps.formats.names import frame_file_name, safe_name
from cvapps.io.safe_write import StagedFile, output_error
from cvapps.io.sinks.base import StagedSink, open_temp
from cvapps.structures import Frame, Prediction


def prediction_to_json(prediction: Prediction, class_names: Sequence[str]) -> dict[str, Any]:
    """A JSON-ready dict for one prediction: its one JSON form (:meth:`cvapps.structures.Prediction.to_json`,
    lossless, as ``Result.to_dict`` and the Ray manifest hold it), the keys of each part it has:
    detections {"boxes": [[x1, y1, x2, y2], ...] (original pixels), "scores", "labels", "names"},
    plus "masks" (compressed COCO RLE per instance) + "mask_size" when the model gives instance masks,
    "track_ids" (parallel to "boxes") when tracked; a class mask {"size": [H, W], "classes": [{label,
    name, pixels, score, rle}], "class_scores"}; a classification {"label", "name", "score", "topk":
    [{label, name, score}]}; a presence head {"present": [{label, name, score}], "presence"}; and
    "counts" ({"lines": [{"line", "in", "out", "classes"}], "zones": [{"zone", "count", "classes"}]}:
    line totals so far and zone occupancy in this frame) when counting.
    """
    return prediction.to_json(class_names)


class JsonLinesSink(StagedSink):
    def __init__(self, path: str | Path, class_names: Sequence[str], root: str | Path | None = None) -> None:
        super().__init__()
        self.path, self.class_names, self.root = Path(path), list(class_names), root
        # the staged temp file and its open file, made at the first line: inside the run, once OUT is
        # checked (an OUT refused as an input folder gets no temp file)
        self._tmp: StagedFile | None = None
        self._fh: Any = None
        self._closed = False
        self.lines = 0
        self.events = 0
        self._take_events: Callable[[], list[dict[str, Any]]] | None = None
        self._pending: list[dict[str, Any]] = []

    def start(self, source: Any) -> None:
        """Collect the source's events (gaps of live sources), if it has any."""
        take = getattr(source, "take_events", None)
        self._take_events = take if callable(take) else None

    def write(self, frame: Frame, prediction: Prediction) -> None:
        h, w = frame.image.shape[:2]
        stream = frame.stream if frame.is_video else None
        self._write_events(stream, frame.timestamp)
        record = {"source": safe_name(frame.source), "file_name": frame_file_name(frame, self.root),
                  "index": frame.index, "timestamp": round(frame.timestamp, 4), "width": w, "height": h}
        if stream is not None:
            record["stream"] = safe_name(stream)
        record["prediction"] = prediction_to_json(prediction, self.class_names)
        self.write_record(record)

    def _write_events(self, stream: str | None, timestamp: float | None) -> None:
        """Write the events due before a frame of ``stream`` at ``timestamp``: its gaps that ended by
        then (frames wait in queues, so a gap is known before the frames read ahead of it are written);
        with ``stream=None`` every pending event (the end of the run)."""
        if self._take_events is not None:
            self._pending += self._take_events()
        keep = []
        for event in self._pending:
            due = stream is None or (event.get("source") == stream and event.get("to", 0.0) <= timestamp + 1e-3)
            if not due:
                keep.append(event)
                continue
            self._append({**event, "source": safe_name(str(event.get("source", "")))})
            self.events += 1
        self._pending = keep

    def write_record(self, record: dict[str, Any]) -> None:
        """Append any JSON-serialisable dict as one line (for pipelines with their own records)."""
        self._append(record)
        self.lines += 1

    def _file(self) -> Any:
        if self._fh is None:
            self._tmp, self._fh = open_temp(self.path)
        return self._fh

    def _append(self, record: dict[str, Any]) -> None:
        fh = self._file()
        try:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        except OSError as exc:  # a full disk or `ulimit -f`: one line; the run then discards the temp file
            raise output_error(self.path, exc) from None

    @property
    def targets(self) -> list[Path]:
        return [self.path]

    def prepare(self) -> None:
        if not self._closed:
            self._write_events(None, None)
            fh = self._file()  # a run without frames still writes its (empty) file
            self._closed = True
            assert self._tmp is not None
            self.stage_file(self._tmp)
            try:
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fh.close()

    def discard(self) -> None:
        self._closed = True
        if self._fh is not None and not self._fh.closed:
            with contextlib.suppress(OSError):  # buffered lines that cannot be flushed are dropped anyway
                self._fh.close()
        super().discard()
        if self._tmp is not None:
            self._tmp.discard()
