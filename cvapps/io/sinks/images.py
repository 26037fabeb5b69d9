"""Per-frame image outputs and the classification CSV.

Every per-frame file goes to ``OUT_DIR/<path>`` with ``<path>`` from
:func:`cvapps.formats.names.output_relpath`: images under the source folder mirror its tree, other
images keep their file name, video frames become ``<video stem>_<frame>.jpg``. Images are written
atomically as they come.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from cvapps.formats.masks import write_mask
from cvapps.formats.names import FrameRef, output_relpath, safe_name
from cvapps.io.draw import Draw
from cvapps.io.images import write_image
from cvapps.io.overlay import overlay_mask
from cvapps.io.sinks.base import StagedSink
from cvapps.structures import Frame, Prediction


class AnnotatedImages:
    """``OUT_DIR/<path>``: each frame with its prediction drawn (``draw(image, prediction)``)."""

    def __init__(self, out_dir: str | Path, draw: Draw, root: str | Path | None = None, ext: str | None = None) -> None:
        self.out_dir, self.draw, self.root, self.ext = Path(out_dir), draw, root, ext
        self.count = 0

    def target(self, frame: FrameRef | str) -> Path:
        return self.out_dir / output_relpath(frame, self.root, self.ext)

    def write(self, frame: Frame, prediction: Any) -> None:
        write_image(self.target(frame), self.draw(frame.image, prediction))
        self.count += 1

    def close(self) -> None:
        pass


class OverlayImages(AnnotatedImages):
    """``OUT_DIR/<path>.jpg``: the class colours of a prediction's class mask blended over the input."""

    def __init__(self, out_dir: str | Path, class_names: list[str], alpha: float = 0.5,
                 root: str | Path | None = None) -> None:
        super().__init__(out_dir, self._overlay, root, ".jpg")
        self.class_names, self.alpha = class_names, alpha

    def _overlay(self, image: np.ndarray, prediction: Prediction) -> np.ndarray:
        return overlay_mask(image, prediction.semantic.mask, self.alpha, class_names=self.class_names)


class MaskImages:
    """``OUT_DIR/<path>.png``: the class-index mask of each frame (:mod:`cvapps.formats.masks`)."""

    def __init__(self, out_dir: str | Path, root: str | Path | None = None) -> None:
        self.out_dir, self.root = Path(out_dir), root
        self.count = 0

    def write(self, frame: Frame, prediction: Prediction) -> None:
        mask = prediction.semantic  # a multitask model's mask too (values: background, names)
        if mask is not None:
            write_mask(self.out_dir / output_relpath(frame, self.root, ".png"), mask.mask)
            self.count += 1

    def close(self) -> None:
        pass


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(cell: str) -> str:
    """A text cell a spreadsheet will not run: one starting with ``= + - @``, a tab or a carriage
    return gets a leading ``'`` (OWASP's CSV-injection rule), unless it is a plain number (``-0.5``
    is a value, not a formula)."""
    if not cell.startswith(_FORMULA_START):
        return cell
    try:
        float(cell)
        return cell
    except ValueError:
        return "'" + cell


class ClassificationCSV(StagedSink):
    """``predictions.csv``: path,label,score then label_k,score_k for the top-k (k >= 2). A path that
    is not valid UTF-8 is written with its bytes escaped (``bad\\xffname.png``); text cells (paths,
    class names) that a spreadsheet would read as a formula are prefixed with ``'`` (:func:`csv_text`)."""

    inline = True  # one in-memory row per frame: the runner calls it without a writer thread

    def __init__(self, path: str | Path, class_names: list[str], topk: int = 3) -> None:
        super().__init__()
        self.path, self.class_names, self.topk = Path(path), class_names, topk
        self.rows: list[list[Any]] = []
        self.counts: dict[str, int] = {}

    def write(self, frame: Frame, prediction: Prediction) -> None:
        cls = prediction.classification
        name = self.class_names[cls.label]
        row: list[Any] = [csv_text(safe_name(frame.source)), csv_text(name), f"{cls.score:.4f}"]
        for label, score in cls.topk[1:self.topk]:
            row += [csv_text(self.class_names[label]), f"{score:.4f}"]
        self.rows.append(row)
        self.counts[name] = self.counts.get(name, 0) + 1

    @property
    def targets(self) -> list[Path]:
        return [self.path]

    def prepare(self) -> None:
        header = ["path", "label", "score"]
        for k in range(2, self.topk + 1):
            header += [f"label_{k}", f"score_{k}"]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        for row in self.rows:
            writer.writerow(row + [""] * (len(header) - len(row)))
        self.stage_text(self.path, buf.getvalue())

    def summary(self) -> str:
        return ", ".join(f"{name} {n}" for name, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
