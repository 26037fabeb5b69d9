"""Tracks as MOT Challenge files (:mod:`cvapps.formats.mot`), one per video or stream.

``OUT/tracks/<video stem>.txt``: ``frame (from 1), track id, x, y, w, h, score, class, -1`` per
tracked box, ``class`` being the 1-based line of ``OUT/tracks/labels.txt`` (the class names). A
file and ``labels.txt`` zipped as ``gt/gt.txt`` + ``gt/labels.txt`` import into CVAT as tracks
("MOT 1.1"); motmetrics and TrackEval score the file against a ``gt.txt``. Lines are appended to
hidden temp files as frames come (memory stays flat) and moved into place on commit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvapps.formats.mot import MotRow
from cvapps.formats.names import check_class_names
from cvapps.io.safe_write import StagedFile, discard_all, output_error
from cvapps.io.sinks.base import StagedSink, open_temp
from cvapps.structures import Frame, Prediction


class MotTracksSink(StagedSink):
    """Writes each tracked frame's boxes to ``folder/<video stem>.txt`` and the class names to
    ``folder/labels.txt``; frames without track ids (still images, untracked runs) are ignored, and
    a run with none writes nothing."""

    def __init__(self, folder: str | Path, class_names: Sequence[str]) -> None:
        super().__init__()
        # one name per line of labels.txt: a name with a newline would shift every later class id
        self.folder, self.class_names = Path(folder), check_class_names(class_names)
        self._files: dict[str, tuple[Path, StagedFile, Any]] = {}  # video -> (final path, staged file, file)

    def _file(self, video: str) -> Any:
        if video not in self._files:
            stem = "stream" if "://" in video else (re.sub(r"[^\w.\-]+", "_", Path(video).stem) or "video")
            taken = {final.name for final, _, _ in self._files.values()}
            name, n = f"{stem}.txt", 1
            while name in taken:  # two streams (or same-named videos) get stream.txt, stream_2.txt, ...
                n += 1
                name = f"{stem}_{n}.txt"
            tmp, fh = open_temp(self.folder / name)
            self._files[video] = (self.folder / name, tmp, fh)
        return self._files[video][2]

    def write(self, frame: Frame, prediction: Prediction) -> None:
        det = prediction.detections
        if not frame.is_video or det is None or det.track_ids is None:
            return
        fh = self._file(frame.stream)  # one file per video or stream
        try:
            for (x1, y1, x2, y2), score, label, tid in zip(det.boxes.tolist(), det.scores.tolist(),
                                                           det.labels.tolist(), det.track_ids.tolist()):
                fh.write(MotRow(frame.index + 1, int(tid), (x1, y1, x2 - x1, y2 - y1), float(score),
                                int(label) + 1).line())
            fh.flush()
        except OSError as exc:  # a full disk or `ulimit -f`: one line; the run then discards the temp files
            raise output_error(self._files[frame.stream][0], exc) from None

    @property
    def targets(self) -> list[Path]:
        finals = [final for final, _, _ in self._files.values()]
        return [*finals, self.folder / "labels.txt"] if finals else []  # no tracked video frame: no files

    @property
    def path(self) -> Path:
        return self.folder

    def prepare(self) -> None:
        for _, staged, fh in self._files.values():
            if not fh.closed:
                fh.close()
                self.stage_file(staged)
        if self._files:
            self.stage_text(self.folder / "labels.txt", "".join(f"{n}\n" for n in self.class_names))

    def discard(self) -> None:
        for _, staged, fh in self._files.values():
            if not fh.closed:
                with contextlib.suppress(OSError):
                    fh.close()
        # every temp file first, then the folders made for them (tracks/ holds several)
        discard_all([staged for _, staged, _ in self._files.values()] + self._staged)
        self._staged = []
