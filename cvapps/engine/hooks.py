"""Training hooks: each thing the loop does around its steps, as one named object (detectron2's style).

The :class:`~cvapps.engine.train.Trainer` owns the state and calls, for every hook in order,
``before_train``, then per epoch ``before_epoch``, ``after_step`` (after each optimizer step),
``after_epoch``, and at the end ``after_train``. The hooks of a run, in order::

    EvalHook        val/* metrics into trainer.row (every train.val_every epochs and after the last)
    CheckpointHook  last.pt every epoch, best.pt when the task's primary metric improved
    LoggerHook      the loggers train.log names (metrics.csv, TensorBoard; see cvapps.engine.loggers)
    ...             the user's hooks and callbacks, in the order given to train(callbacks=[...])
    PlotHook        loss.png and metrics.png
    ConsoleHook     the "epoch N: loss ..." line

So a user hook's ``after_epoch`` sees the epoch's val metrics in ``trainer.row`` and its last.pt written.
What a hook may read: ``trainer.cfg``, ``task``, ``model`` (unwrapped), ``optimizer``, ``scheduler``,
``epoch`` (0-based), ``step`` (0-based, in the epoch), ``losses`` (the last step's dict), ``row`` (this
epoch's metrics, in ``history``), ``history``, ``best``, ``out``, ``is_main``, ``log``. Setting
``trainer.stop = True`` ends training after the current epoch (its checkpoint and metrics are written;
under DDP every rank stops when one asks). Hooks run on every DDP rank, the built-in ones write on
rank 0 only. ``after_train`` runs when training completes, not when it fails::

    class StopAtAccuracy(HookBase):
        def after_epoch(self) -> None:
            if self.trainer.row.get("val/accuracy", 0.0) >= 0.95:
                self.trainer.stop = True

    cvapps.train("configs/classify_shapes.yaml", callbacks=[StopAtAccuracy(), EarlyStopping(patience=5)])

A plain callback ``fn(run, metrics)`` (or an object with ``on_epoch_end(run, metrics)``) is wrapped in
a :class:`LoggerHook` of its own: it is called after every epoch on rank 0, as before hooks existed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from cvapps.checkpoint import load_checkpoint, save_checkpoint
from cvapps.engine.evaluate import EvalOptions, evaluate
from cvapps.engine.loggers import CallbackLike, EpochLoggers, EpochRun
from cvapps.engine.slicing import tile_slicing
from cvapps.metrics.plots import plot_history
from cvapps.tasks.base import DatasetSplits

if TYPE_CHECKING:
    from cvapps.engine.train import Trainer


class HookBase:
    """A training hook: override any of the events; ``self.trainer`` is set when it is registered."""

    trainer: Trainer

    def before_train(self) -> None:
        """Once, after the model, data and a resumed state are ready (``trainer.start_epoch``)."""

    def before_epoch(self) -> None:
        """At the start of epoch ``trainer.epoch`` (0-based)."""

    def after_step(self) -> None:
        """After each optimizer step (``trainer.step``, ``trainer.losses``); skipped steps don't count."""

    def after_epoch(self) -> None:
        """After the epoch's steps; ``trainer.row`` holds its metrics so far."""

    def after_train(self) -> None:
        """Once, when the last epoch is done or a hook stopped training."""


class EvalHook(HookBase):
    """Validation metrics (``val/<name>``) into ``trainer.row`` every ``train.val_every`` epochs and
    after the last one, on rank 0 (the other ranks wait at the end-of-epoch barrier)."""

    def after_epoch(self) -> None:
        t = self.trainer
        tc = t.cfg.train
        if t.is_main and ((t.epoch + 1) % tc.val_every == 0 or t.epoch + 1 == tc.epochs):
            metrics = evaluate(t.task, t.model, t.splits, t.task.preprocessing(t.cfg), t.device,
                               EvalOptions(batch=tc.batch, category_ids=category_ids(t.splits),
                                           slicing=tile_slicing(t.cfg, t.task)))
            t.row.update({f"val/{k}": v for k, v in metrics.items()})


class CheckpointHook(HookBase):
    """``last.pt`` after every epoch (with the optimizer state to resume from), ``best.pt`` when the
    task's primary val metric improved (``trainer.best``); never non-finite weights."""

    def after_epoch(self) -> None:
        t = self.trainer
        score = t.row.get(f"val/{t.task.primary_metric}")
        t.improved = score is not None and score > t.best
        if t.improved:
            t.best = score
        _require_finite(t)  # every rank holds the same weights: same branch
        if t.is_main:
            state = checkpoint_state(t, {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
                                         "scaler": t.scaler.state_dict(), "best": t.best, "history": t.history})
            save_checkpoint(t.out / "last.pt", state)
            if t.improved:
                save_checkpoint(t.out / "best.pt", {**state, "train_state": None})

    def after_train(self) -> None:
        out = self.trainer.out
        if self.trainer.is_main and not (out / "best.pt").exists() and (out / "last.pt").exists():
            # No evaluation ran an improvement (e.g. every epoch resumed); keep the contract: best.pt exists.
            save_checkpoint(out / "best.pt", {**load_checkpoint(out / "last.pt"), "train_state": None})


class LoggerHook(HookBase):
    """Each epoch's ``trainer.row`` to the loggers ``names`` (``train.log``: csv, tensorboard) and to
    plain callbacks, on rank 0; closes them when training ends (:mod:`cvapps.engine.loggers`).

    Built here, so a missing TensorBoard or a callback that is not callable fails before training.
    """

    def __init__(self, names: Sequence[str] = (), callbacks: Iterable[CallbackLike] = ()) -> None:
        self.loggers = EpochLoggers(names, callbacks)

    def after_epoch(self) -> None:
        t = self.trainer
        if t.is_main:
            self.loggers.on_epoch_end(EpochRun(t.out, t.epoch + 1, t.cfg.train.epochs, t.history), t.row)

    def after_train(self) -> None:
        self.loggers.close()


class PlotHook(HookBase):
    """``loss.png`` and ``metrics.png`` in OUT after every epoch, on rank 0."""

    def after_epoch(self) -> None:
        if self.trainer.is_main:
            plot_history(self.trainer.history, self.trainer.out)


class ConsoleHook(HookBase):
    """One line per epoch: the mean loss and the scalar val metrics (the last thing an epoch does,
    so a supervisor that sees it finds that epoch's files written)."""

    def after_epoch(self) -> None:
        row = self.trainer.row
        shown = ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in row.items() if k.startswith("val/") and
                          isinstance(v, float) and "/" not in k.split("/", 1)[1])
        self.trainer.log(f"epoch {self.trainer.epoch + 1}: loss {row.get('train/loss', float('nan')):.4f}"
                         + (f", {shown}" if shown else ""))


class EarlyStopping(HookBase):
    """Stop training once ``metric`` (default: ``val/`` + the task's primary metric) has not improved
    for ``patience`` evaluations in a row; epochs without that metric (no validation) don't count.

    mode: ``max`` (accuracy, mAP) or ``min`` (a loss such as ``train/loss``).
    Place it in ``callbacks=[...]``; the run still ends with last.pt and best.pt of the epochs it trained.
    """

    def __init__(self, patience: int, metric: str | None = None, mode: Literal["max", "min"] = "max") -> None:
        if patience < 1 or mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping: patience must be >= 1 and mode max or min, got {patience}, {mode!r}")
        self.patience, self.metric, self.sign = patience, metric, 1.0 if mode == "max" else -1.0
        self.best, self.waited = -math.inf, 0

    def after_epoch(self) -> None:
        t = self.trainer
        key = self.metric or f"val/{t.task.primary_metric}"
        value = t.row.get(key)
        if not isinstance(value, (int, float)):
            return  # not evaluated this epoch (or on this rank)
        if self.sign * value > self.best:
            self.best, self.waited = self.sign * value, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            t.log(f"early stopping: {key} has not improved in {self.waited} evaluations")
            t.stop = True


def default_hooks(log_names: Sequence[str], callbacks: Iterable[HookBase | CallbackLike] = ()) -> list[HookBase]:
    """The hooks of a run, in the order they are called (see the module docstring)."""
    return [EvalHook(), CheckpointHook(), LoggerHook(log_names), *as_hooks(callbacks), PlotHook(), ConsoleHook()]


def as_hooks(callbacks: Iterable[HookBase | CallbackLike]) -> list[HookBase]:
    """Hooks as they are; each plain callback in a :class:`LoggerHook` of its own (checked here)."""
    return [cb if isinstance(cb, HookBase) else LoggerHook(callbacks=[cb]) for cb in callbacks]


def checkpoint_state(t: Trainer, train_state: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint of the trainer's model after epoch ``t.epoch`` with this epoch's metrics."""
    return {
        "task": t.task.name,
        "config": t.cfg.model_dump(mode="json"),
        "class_names": list(t.splits.class_names),
        "category_ids": category_ids(t.splits),
        "preprocessing": t.task.preprocessing(t.cfg),
        "model": {k: v.detach().cpu() for k, v in t.model.state_dict().items()},
        "epoch": t.epoch + 1,
        "metrics": {k: float(v) for k, v in t.row.items() if isinstance(v, (int, float))},
        "train_state": train_state,
    }


def category_ids(splits: DatasetSplits) -> list[int] | None:
    return getattr(splits, "category_ids", None) or getattr(splits.val_extra, "category_ids", None)


def _require_finite(t: Trainer) -> None:
    """Never save non-finite weights as last/best: stop with the last good checkpoint instead."""
    bad = [k for k, v in t.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        t.fail(f"{len(bad)} tensors of the model are not finite after epoch {t.epoch + 1} "
               f"(e.g. {bad[0]}), so they were not saved")
