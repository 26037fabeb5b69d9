"""Run a predictor over a source into sinks: three overlapping stages, a clean stop, a timing report.

::

    reader thread (Source: decode)  ->  prefetch thread (Predictor: batch + preprocess)
        ->  main thread (forward + postprocess)  ->  writer thread (sinks: draw, encode, write)

Every hand-over is a bounded queue (a :mod:`cvapps.threads` stage: frame count and byte budget),
so memory stays flat however long the input is, and decode, inference and encode run at the same
time. The writer thread feeds every sink each
``(frame, prediction)`` in input order; with no sink, or only in-memory ones (``inline = True``),
the main thread writes them itself (a hand-off would cost more than the write).

Stopping: Ctrl-C or SIGTERM (when run from the main thread) stops *reading*; frames already read
are still predicted and written, then every sink is closed, so each output is valid (the mp4 has
its index, JSON files are whole). A second Ctrl-C aborts the flush but still closes the sinks.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from tqdm import tqdm

from cvapps.engine.device import progress_interval
from cvapps.engine.predict import Predictor
from cvapps.errors import CvappsError, plural
from cvapps.io.images import file_size_cap
from cvapps.io.sinks import Sink, close_all
from cvapps.io.sources import Source, SourceOptions, open_source
from cvapps.threads import QUEUE_BYTES, Consumer

STAGES = ("read", "preprocess", "infer", "postprocess", "write")
WRITE_QUEUE = 32  # frames waiting for the writer thread at most


@dataclass
class RunReport:
    """What a run did. ``timings``: seconds spent per stage (stages overlap, so they do not add up
    to ``wall_s``); ``interrupted``: the signal name that stopped the run early, else None."""

    processed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0
    interrupted: str | None = None
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    out: str = ""  # the output folder, named by the summary (set by the CLI)

    @property
    def fps(self) -> float:
        return self.processed / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> str:
        text = f"processed {plural(self.processed, 'image')}"
        if self.skipped:
            text += f", skipped {plural(len(self.skipped), 'unreadable file')}"
        if self.dropped:
            text += f", dropped {plural(self.dropped, 'live frame')}"
        if self.interrupted:
            text += f" (stopped early by {self.interrupted}; outputs hold what was processed)"
        if self.out:
            text += f"; results in {self.out}"
        return text

    def timing_report(self) -> str:
        n = max(1, self.processed)
        stages = ", ".join(f"{s} {1000 * self.timings.get(s, 0.0) / n:.1f}" for s in STAGES)
        return (f"{plural(self.processed, 'frame')} in {self.wall_s:.2f} s ({self.fps:.1f} frames/s); "
                f"ms/frame per stage (stages overlap): {stages}")


class _Writer:
    """The writer stage: hands each ``(frame, prediction)`` to every sink, counting and timing.

    A :class:`~cvapps.threads.Consumer` thread when some sink does real work per frame (drawing,
    encoding, files); inline on the caller's thread when there is none or every sink is marked
    ``inline = True`` (in-memory rows: the CSV), where a thread hand-off per frame would cost more
    than the write (measured: 10% of a 64 px classifier's throughput on 2 cores).
    """

    def __init__(self, sinks: Sequence[Sink], maxsize: int, bar: tqdm) -> None:
        self.sinks, self.bar = list(sinks), bar
        self.write_s = 0.0
        self.written = 0
        self.stage: Consumer[tuple[Any, Any]] | None = None
        if not all(getattr(sink, "inline", False) for sink in self.sinks):
            self.stage = Consumer(self._write, maxsize=maxsize, name="cvapps-writer", max_bytes=QUEUE_BYTES,
                                  weigh=lambda item: item[0].image.nbytes)
            self.stage.start()

    def _write(self, item: tuple[Any, Any]) -> None:
        frame, prediction = item
        t0 = time.perf_counter()
        for sink in self.sinks:
            sink.write(frame, prediction)
        self.write_s += time.perf_counter() - t0
        self.written += 1
        self.bar.update(1)

    def put(self, item: tuple[Any, Any]) -> None:
        if self.stage is None:
            self._write(item)
        else:
            self.stage.put(item)

    @property
    def error(self) -> BaseException | None:
        return self.stage.error if self.stage is not None else None

    def is_alive(self) -> bool:
        return self.stage is not None and self.stage.is_alive()

    def abort(self) -> None:
        if self.stage is not None:
            self.stage.abort()

    def finish(self) -> None:
        if self.stage is not None:
            self.stage.finish()


class _StopOnSignal:
    """SIGINT/SIGTERM -> ``source.request_stop()`` (takes no lock, so safe in a handler).

    A second SIGINT raises KeyboardInterrupt as usual. Installed only from the main thread, and the
    previous handlers are restored on exit.
    """

    def __init__(self, source: Source, enabled: bool) -> None:
        self.source = source
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self.source.request_stop()

    def __enter__(self) -> "_StopOnSignal":
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_source(predictor: Predictor, source: Any, sinks: Sequence[Sink], *, progress: bool = True,
               options: dict[str, Any] | None = None, source_options: SourceOptions | None = None,
               handle_signals: bool = True) -> RunReport:
    """Predict every frame of ``source`` and hand each result to every sink; sinks are always closed.

    source: a :class:`~cvapps.io.sources.SourceSpec`, anything
    :func:`~cvapps.io.sources.describe_source` takes, or an open :class:`Source`. options: passed
    to the task's postprocess (``conf``, ``topk``...). source_options: stride, shard, buffering,
    reconnection and the file-size cap (:class:`~cvapps.io.sources.SourceOptions`; an open Source
    keeps the options it was opened with, only ``max_file_mb`` applies). handle_signals: catch
    Ctrl-C/SIGTERM for a clean stop.
    """
    source_options = source_options if source_options is not None else SourceOptions()
    with file_size_cap(source_options.max_file_mb):  # files over the cap are skipped unread
        return _run(predictor, source, sinks, progress, options, source_options, handle_signals)


def _run(predictor: Predictor, source: Any, sinks: Sequence[Sink], progress: bool, options: dict[str, Any] | None,
         source_options: SourceOptions, handle_signals: bool) -> RunReport:
    report = RunReport()
    before = dict(predictor.timings)
    t_start = time.perf_counter()
    writer: _Writer | None = None
    completed = False
    try:
        src = source if isinstance(source, Source) else open_source(source, source_options)
        with src, _StopOnSignal(src, handle_signals) as stopper:
            for sink in sinks:
                start = getattr(sink, "start", None)
                if callable(start):
                    start(src)
            bar = tqdm(total=src.expected_frames if not src.is_live else None, desc="predict", unit="img",
                       disable=not progress, dynamic_ncols=True, mininterval=progress_interval())
            writer = _Writer(sinks, WRITE_QUEUE, bar)
            try:
                for frame, prediction in predictor.predict(src, **(options or {})):
                    writer.put((frame, prediction))
                    report.processed += 1
                writer.finish()
            except KeyboardInterrupt:
                report.interrupted = "SIGINT"
                writer.abort()
                writer.finish()
            finally:
                bar.close()
                report.skipped = list(src.skipped)
                report.dropped = src.dropped
                report.interrupted = report.interrupted or stopper.signal_name
            if writer.error is not None:
                raise writer.error
            report.processed = writer.written
        completed = True
    finally:
        if writer is not None and writer.is_alive():  # an exception skipped finish(): stop it now
            writer.abort()
            writer.finish()
        # all-or-nothing: whole-file outputs are moved into place only if every sink closed and the
        # run did not fail (a run stopped by Ctrl-C, even twice, is complete up to where it stopped)
        stopped = isinstance(sys.exc_info()[1], KeyboardInterrupt)
        errors = close_all(sinks, commit=completed or stopped)
        # a CvappsError in flight is the run's one line (its staged outputs are dropped with it)
        if errors and not completed and report.processed and not isinstance(sys.exc_info()[1], CvappsError):
            print(errors[-1], file=sys.stderr)
        report.wall_s = time.perf_counter() - t_start
        report.timings = {k: predictor.timings.get(k, 0.0) - before.get(k, 0.0) for k in STAGES if k != "write"}
        report.timings["write"] = writer.write_s if writer is not None else 0.0
        if errors and completed:
            raise CvappsError(errors[-1])
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return report
