"""Where the training loop's per-epoch metrics go: ``metrics.csv``, TensorBoard, user callbacks.

``train.log`` in the config picks the built-in loggers (``csv``: ``OUT/metrics.csv``;
``tensorboard``: event files in ``OUT/``); ``train(cfg, callbacks=[...])`` adds the user's own.
Every logger and callback gets the same ``(run, metrics)`` once per epoch, on rank 0 only.

A callback is a plain callable ``fn(run, metrics)`` or any object with
``on_epoch_end(run, metrics)`` (and optionally ``close()``, called once when training ends)::

    def to_my_tracker(run, metrics):
        tracker.log(metrics, step=run.epoch)

    train(cfg, callbacks=[to_my_tracker])

The same list takes training hooks (every event, the trainer's state, stopping early): a callback
here is the ``after_epoch`` of a hook, see :mod:`cvapps.engine.hooks`.
"""

from __future__ import annotations

import csv
import io
import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cvapps.checkpoint import atomic_write_text
from cvapps.errors import ConfigError

TENSORBOARD_HINT = "pip install 'cvapps[tensorboard]'"


@dataclass
class EpochRun:
    """What a callback sees of the run after an epoch.

    out: the run's output folder (checkpoints, metrics.csv, event files).
    epoch: the epoch just finished, 1-based (the ``epoch`` column of metrics.csv, the TensorBoard step).
    epochs: the number of epochs the run trains in total.
    history: one metrics dict per finished epoch so far (earlier epochs of a resumed run included);
    ``history[-1]`` is the ``metrics`` the callback receives.
    """

    out: Path
    epoch: int
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)


@runtime_checkable
class Callback(Protocol):
    def on_epoch_end(self, run: EpochRun, metrics: dict[str, float]) -> None: ...


CallbackLike = Callback | Callable[[EpochRun, dict[str, float]], Any]


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    """``history`` as CSV (one row per epoch, the union of keys as columns), written atomically."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys and not isinstance(row[k], (list, dict))]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in keys})
    atomic_write_text(path, buf.getvalue())


class CsvLogger:
    """``OUT/metrics.csv``, rewritten whole after every epoch (so a resumed run keeps its rows)."""

    def on_epoch_end(self, run: EpochRun, metrics: dict[str, float]) -> None:
        write_metrics_csv(run.out / "metrics.csv", run.history)


class TensorBoardLogger:
    """TensorBoard event files in ``OUT/``: every number of metrics.csv under the same name, step = epoch.

    Constructing it checks that TensorBoard is installed (so a missing package fails before training);
    the writer itself is opened at the first epoch, so a run that fails early leaves no event file.
    """

    def __init__(self) -> None:
        try:
            # Lazy: tensorboard is an optional dependency (the `tensorboard` extra).
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(f"train.log lists tensorboard, which is not installed; {TENSORBOARD_HINT}") from None
        self._writer_class = SummaryWriter
        self._writer: Any = None

    def on_epoch_end(self, run: EpochRun, metrics: dict[str, float]) -> None:
        if self._writer is None:
            # purge_step: a resumed run drops the events a crashed run wrote after its last checkpoint.
            # TensorBoard opens its event file by name itself; a random suffix makes that name one
            # nobody can plant a link at beforehand (cvapps' own files go through io/safe_write.py).
            self._writer = self._writer_class(log_dir=str(run.out), purge_step=run.epoch,
                                              filename_suffix=f".{secrets.token_hex(8)}")
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(key, value, global_step=run.epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


BUILTIN: dict[str, Callable[[], Callback]] = {"csv": CsvLogger, "tensorboard": TensorBoardLogger}


class EpochLoggers:
    """The loggers ``train.log`` names plus the user's callbacks, called in that order."""

    def __init__(self, names: Sequence[str], callbacks: Iterable[CallbackLike] = ()) -> None:
        unknown = [n for n in names if n not in BUILTIN]
        if unknown:  # the config already refuses these; this guards direct callers
            raise ConfigError(f"train.log: unknown logger {unknown[0]!r}; choose from {', '.join(BUILTIN)}")
        self.items: list[Any] = [BUILTIN[n]() for n in dict.fromkeys(names)]
        for cb in callbacks:
            if not (callable(cb) or callable(getattr(cb, "on_epoch_end", None))):
                raise TypeError(f"callback {cb!r} is neither callable nor has on_epoch_end(run, metrics)")
            self.items.append(cb)

    def on_epoch_end(self, run: EpochRun, metrics: dict[str, float]) -> None:
        for item in self.items:
            hook = getattr(item, "on_epoch_end", None)
            (hook if callable(hook) else item)(run, dict(metrics))

    def close(self) -> None:
        for item in self.items:
            close = getattr(item, "close", None)
            if callable(close):
                close()
