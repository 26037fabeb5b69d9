"""Run a predictor over a source into sinks, with a progress bar and a report of skipped files."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from tqdm import tqdm

from cvapps.engine.predict import Predictor
from cvapps.io.sinks import Sink
from cvapps.io.sources import open_source


@dataclass
class RunReport:
    processed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0

    def summary(self) -> str:
        text = f"processed {self.processed} images"
        if self.skipped:
            text += f", skipped {len(self.skipped)} unreadable files"
        if self.dropped:
            text += f", dropped {self.dropped} live frames"
        return text


def run_source(predictor: Predictor, source: Any, sinks: Sequence[Sink], *, progress: bool = True,
               options: dict[str, Any] | None = None, vid_stride: int = 1) -> RunReport:
    """Predict every frame of ``source`` and hand each result to every sink; sinks are always closed."""
    report = RunReport()
    try:
        with open_source(source, vid_stride=vid_stride) as src:
            bar = tqdm(total=src.frame_count, desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
            try:
                for frame, prediction in predictor.predict(src, **(options or {})):
                    for sink in sinks:
                        sink.write(frame, prediction)
                    report.processed += 1
                    bar.update(1)
            finally:
                bar.close()
                report.skipped = list(src.skipped)
                report.dropped = src.dropped
    finally:
        for sink in sinks:
            sink.close()
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return report
