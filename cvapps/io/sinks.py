"""Where predictions go. A sink has ``write(frame, prediction)`` and ``close()``; the runner feeds
every sink each ``(frame, prediction)`` pair in order and closes them all at the end (also on
Ctrl-C), so every file a sink writes is complete and written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Protocol

from cvapps.checkpoint import atomic_write_text
from cvapps.structures import Classification, Frame


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
