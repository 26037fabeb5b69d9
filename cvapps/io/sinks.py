"""Where predictions go. A sink has ``write(frame, prediction)`` and ``close()``; the runner feeds
every sink each ``(frame, prediction)`` pair in order and closes them all at the end (also on
Ctrl-C), so every file a sink writes is complete and written atomically.

Optional hook: ``start(source)`` is called once before the first frame with the opened
:class:`~cvapps.io.sources.Source` (its ``fps``, ``frame_size``, ``vid_stride``, ``dropped``), e.g. so a
video writer can use the input's frame rate. The runner calls ``write`` from its writer thread.

Generic sinks here: :class:`ClassificationCSV`, :class:`AnnotatedImages`; ``VideoSink``
(annotated mp4), ``JsonLines`` (one JSON object per frame) and ``CocoFrames`` (COCO JSON, one
image per frame) live in :mod:`cvapps.io.video` and are re-exported here.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import cv2
import numpy as np

from cvapps.checkpoint import atomic_write_text
from cvapps.io.images import write_image
from cvapps.structures import Classification, Detections, Frame, SegmentationMask


class Sink(Protocol):
    def write(self, frame: Frame, prediction: Any) -> None: ...

    def close(self) -> None: ...


class ClassificationCSV:
    """``predictions.csv``: path,label,score then label_k,score_k for the top-k (k >= 2)."""

    def __init__(self, path: str | Path, class_names: list[str], topk: int = 3) -> None:
        self.path, self.class_names, self.topk = Path(path), class_names, topk
        self.rows: list[list[Any]] = []
        self.counts: dict[str, int] = {}

    def write(self, frame: Frame, prediction: Classification) -> None:
        name = self.class_names[prediction.label]
        row: list[Any] = [frame.source, name, f"{prediction.score:.4f}"]
        for label, score in prediction.topk[1:self.topk]:
            row += [self.class_names[label], f"{score:.4f}"]
        self.rows.append(row)
        self.counts[name] = self.counts.get(name, 0) + 1

    def close(self) -> None:
        header = ["path", "label", "score"]
        for k in range(2, self.topk + 1):
            header += [f"label_{k}", f"score_{k}"]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        for row in self.rows:
            writer.writerow(row + [""] * (len(header) - len(row)))
        atomic_write_text(self.path, buf.getvalue())

    def summary(self) -> str:
        return ", ".join(f"{name} {n}" for name, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------------------------
# Drawing and JSON for any prediction type (used by the annotated image/video/preview sinks)
# --------------------------------------------------------------------------------------------
Draw = Callable[[np.ndarray, Any], np.ndarray]


def _label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    scale = max(0.4, min(image.shape[:2]) / 600)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    y = max(th + base, y)
    cv2.rectangle(image, (x, y - th - base), (x + tw, y), color, -1)
    cv2.putText(image, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def draw_prediction(image: np.ndarray, prediction: Any, class_names: Sequence[str]) -> np.ndarray:
    """A copy of ``image`` (HxWx3 BGR uint8) with ``prediction`` drawn on it.

    Detections: boxes (xyxy, original pixels) with "name score" (:func:`cvapps.io.draw.draw_detections`);
    SegmentationMask: classes blended at 50 % with a legend (:func:`cvapps.io.overlay.overlay_mask`;
    class index = mask value, background 0 first in ``class_names``); Classification: "name score"
    top left.
    """
    if isinstance(prediction, Detections):
        from cvapps.io.draw import draw_detections

        return draw_detections(image, prediction, class_names)
    if isinstance(prediction, SegmentationMask):
        from cvapps.io.overlay import overlay_mask

        mask = np.asarray(prediction.mask)
        return overlay_mask(image, np.where(mask == 255, 0, mask).astype(np.uint8), class_names=list(class_names))
    out = image.copy()
    if isinstance(prediction, Classification):
        label = prediction.label
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        from cvapps.io.draw import color

        _label(out, f"{name} {prediction.score:.2f}", 4, 4, color(label))
    return out


def make_drawer(class_names: Sequence[str]) -> Draw:
    """``draw(image, prediction) -> image`` for the given class names (see :func:`draw_prediction`)."""
    names = list(class_names)
    return lambda image, prediction: draw_prediction(image, prediction, names)


def prediction_to_json(prediction: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """A JSON-ready dict for one prediction.

    Detections -> {"boxes": [[x1, y1, x2, y2], ...] (original pixels), "scores", "labels", "names"};
    SegmentationMask -> {"classes": {name: pixel count}} (class index = mask value; the mask itself
    goes to COCO RLE / PNG);
    Classification -> {"label", "name", "score", "topk": [[label, score], ...]}.
    """
    name = lambda i: class_names[i] if 0 <= i < len(class_names) else str(i)  # noqa: E731
    if isinstance(prediction, Detections):
        labels = prediction.labels.tolist()
        return {"boxes": [[round(v, 2) for v in b] for b in prediction.boxes.tolist()],
                "scores": [round(s, 4) for s in prediction.scores.tolist()],
                "labels": labels, "names": [name(i) for i in labels]}
    if isinstance(prediction, SegmentationMask):
        values, counts = np.unique(np.asarray(prediction.mask), return_counts=True)
        return {"classes": {("ignore" if v == 255 else name(int(v))): int(c)
                            for v, c in zip(values.tolist(), counts.tolist())}}
    if isinstance(prediction, Classification):
        return {"label": prediction.label, "name": name(prediction.label), "score": round(prediction.score, 4),
                "topk": [[int(i), round(float(s), 4)] for i, s in prediction.topk]}
    raise TypeError(f"cannot serialise a {type(prediction).__name__} prediction")


def frame_file_name(source: str, root: str | Path | None = None) -> str:
    """Name of a frame for outputs: ``video.mp4#frame=000123`` for video frames, the path relative to
    ``root`` for files under it, else the path as given."""
    if "#frame=" in source:
        path, _, frame = source.rpartition("#frame=")
        return f"{Path(path).name}#frame={frame}" if "://" not in path else source
    if root is not None:
        try:
            return Path(os.path.relpath(source, root)).as_posix()
        except ValueError:  # another drive on Windows
            pass
    return source


class AnnotatedImages:
    """Writes each frame with its prediction drawn, as ``out_dir/<name>`` (atomically).

    Still images keep their path relative to ``root`` (or their file name); video/stream frames
    become ``<stem>_<frame>.jpg``. Never writes over a source image: out_dir is where outputs go.
    """

    def __init__(self, out_dir: str | Path, draw: Draw, root: str | Path | None = None, ext: str = ".jpg") -> None:
        self.out_dir, self.draw, self.root, self.ext = Path(out_dir), draw, root, ext
        self.count = 0

    def _target(self, frame: Frame) -> Path:
        if "#frame=" in frame.source:
            path, _, number = frame.source.rpartition("#frame=")
            stem = Path(path).stem if "://" not in path else "stream"
            return self.out_dir / f"{stem}_{number}{self.ext}"
        if self.root is not None:
            rel = Path(os.path.relpath(frame.source, self.root))
            if not rel.as_posix().startswith(".."):
                return self.out_dir / rel
        return self.out_dir / Path(frame.source).name

    def write(self, frame: Frame, prediction: Any) -> None:
        write_image(self._target(frame), self.draw(frame.image, prediction))
        self.count += 1

    def close(self) -> None:
        pass


def __getattr__(name: str) -> Any:
    # The file writers live in cvapps.io.video (which imports this module); re-exported lazily.
    if name in ("VideoSink", "JsonLines", "CocoFrames"):
        from cvapps.io import video

        return {"VideoSink": video.VideoWriterSink, "JsonLines": video.JsonLinesSink,
                "CocoFrames": video.CocoFramesSink}[name]
    raise AttributeError(name)
