"""The one training loop: it builds what the task says, sums the loss dict the model returns,
evaluates, and writes ``last.pt``/``best.pt``/plots into ``cfg.out``; each epoch's metrics go to
the loggers ``train.log`` names and the caller's callbacks (:mod:`cvapps.engine.loggers`).

:class:`Trainer` owns the state and runs the steps; everything around them (evaluation,
checkpoints, loggers, plots, the caller's hooks) is a hook of :mod:`cvapps.engine.hooks`.

Nothing here knows which task it trains: datasets, model, collate and metrics come from the
:class:`~cvapps.tasks.base.Task`, so classification, FCN, Faster R-CNN and YOLO share this code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cvapps.backbones.weights import load_state, read_state_dict
from cvapps.checkpoint import ForeignCheckpoint, load_checkpoint
from cvapps.config import TaskConfig, TrainConfig
from cvapps.engine import distributed as dist
from cvapps.engine.device import images_to_device, progress_interval, resolve_device
from cvapps.engine.hooks import HookBase, default_hooks
from cvapps.engine.loggers import CallbackLike, EpochLoggers, EpochRun
from cvapps.engine.seeding import epoch_seed, seed_augment, seed_everything, worker_init
from cvapps.errors import CvappsError, DataError
from cvapps.formats.names import check_class_names
from cvapps.io.guard import protected
from cvapps.io.run_dirs import removed_if_failed
from cvapps.io.safe_write import ensure_dir, ensure_writable_folder
from cvapps.tasks import get_task
from cvapps.tasks.base import Task


@dataclass
class TrainResult:
    out: Path
    best_metric: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def best(self) -> Path:
        return self.out / "best.pt"

    @property
    def last(self) -> Path:
        return self.out / "last.pt"


def build_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases: decaying them only hurts (standard practice).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if tc.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=tc.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, tc: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else 1.0
        if tc.scheduler == "none":
            return warm
        progress = min(1.0, step / max(1, total_steps))
        return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loader(task: Task, dataset, cfg: TaskConfig, *, shuffle: bool, device: torch.device,
                sampler=None, rank: int = 0) -> DataLoader:
    """The train (``shuffle``) or eval loader; workers are seeded from its generator (``train.seed``
    + ``rank``, so DDP ranks augment differently) by :func:`cvapps.engine.seeding.worker_init`."""
    workers = cfg.data.workers
    return DataLoader(
        dataset, batch_size=cfg.train.batch, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, collate_fn=task.collate, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, drop_last=False,
        generator=torch.Generator().manual_seed(cfg.train.seed + rank) if shuffle else None,
        worker_init_fn=worker_init if workers > 0 else None,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def train(cfg: TaskConfig, *, progress: bool = True, log: Callable[[str], None] = print,
          trust: bool = False, callbacks: Iterable[HookBase | CallbackLike] = ()) -> TrainResult:
    """Train ``cfg``'s task end to end; returns where the checkpoints are and the metric history.

    trust: allow a full unpickle of model files that need one (native ultralytics models only).
    callbacks: training hooks (:class:`~cvapps.engine.hooks.HookBase`: ``before_train``, ``before_epoch``,
    ``after_step``, ``after_epoch``, ``after_train``, with the trainer's state), or plain callables
    ``fn(run, metrics)`` / objects with ``on_epoch_end(run, metrics)``, called after every epoch on
    rank 0 with that epoch's metrics.csv row (see :mod:`cvapps.engine.loggers`).
    """
    task = get_task(cfg.task)
    # OUT is an output root (every file written inside it through no link) that may not lie in the
    # dataset (the next run would train on the plots) nor hold the starting weights (replaced by best.pt);
    # a run that fails before writing anything leaves no empty OUT behind.
    with removed_if_failed(cfg.out), protected(cfg.out, folders=[cfg.data.root], files=_start_files(cfg),
                                               option="out="):
        ensure_writable_folder(cfg.out, "out=")  # before any dataset loading: a bad out fails at once
        return _train(task, cfg, progress=progress, log=log, trust=trust, callbacks=callbacks)


def _start_files(cfg: TaskConfig) -> list[str]:
    """Model files a run starts from (never replaced by its outputs): ``model.weights``, and an
    ultralytics ``model.model`` file; not on resume, which reads OUT's own last.pt."""
    if cfg.train.resume:
        return []
    files = [cfg.model.weights, getattr(cfg.model, "model", None)]
    return [f for f in files if isinstance(f, str) and Path(f).is_file()]


def _train(task: Task, cfg: TaskConfig, *, progress: bool, log: Callable[[str], None], trust: bool,
           callbacks: Iterable[HookBase | CallbackLike]) -> TrainResult:
    callbacks = list(callbacks)
    if task.trains_externally:  # e.g. native ultralytics models train with their own trainer
        return _train_external(task, cfg, progress=progress, log=log, trust=trust, callbacks=callbacks)
    hooks = default_hooks(cfg.train.log, callbacks)  # a missing tensorboard fails here, before training
    trainer = Trainer(task, cfg, progress=progress, log=log)
    trainer.register_hooks(hooks)
    return trainer.train()


def _train_external(task: Task, cfg: TaskConfig, *, progress: bool, log: Callable[[str], None], trust: bool,
                    callbacks: list[HookBase | CallbackLike]) -> TrainResult:
    hooks = [cb for cb in callbacks if isinstance(cb, HookBase)]
    if hooks:
        raise CvappsError(f"callbacks: {hooks[0]!r} is a training hook, but {task.name} models train with their "
                          "own trainer, which calls none; pass fn(run, metrics) callbacks instead")
    loggers = EpochLoggers(cfg.train.log, callbacks)  # a missing tensorboard fails here, before training
    best, history = task.train_external(cfg, resolve_device(cfg.train.device), progress=progress,
                                        trust=trust, log=log)
    out = Path(cfg.out).resolve()
    # Their trainer has no per-epoch hook of ours: replay its history once it is done.
    for i, row in enumerate(history):
        loggers.on_epoch_end(EpochRun(out, int(row.get("epoch", i + 1)), cfg.train.epochs, history[: i + 1]), row)
    loggers.close()
    return TrainResult(out, best, history)


class Trainer:
    """Owns the training state and runs the loop: per epoch the steps (:meth:`run_step`), then each
    hook's events in order (:mod:`cvapps.engine.hooks` lists the hooks and what they may read).

    Building it sets up DDP (under torchrun), the datasets, the model (``model.weights``; or
    OUT/last.pt with ``train.resume``), the optimizer, the scheduler and the AMP scaler.
    """

    def __init__(self, task: Task, cfg: TaskConfig, *, progress: bool = True,
                 log: Callable[[str], None] = print) -> None:
        self.task, self.cfg, self.progress = task, cfg, progress
        self.ctx = ctx = dist.setup(cfg.train.device)
        self.device = device = ctx.device if ctx.enabled else resolve_device(cfg.train.device)
        self.log = log if ctx.is_main else _quiet
        seed_everything(cfg.train.seed + ctx.rank)  # random, NumPy, torch: see cvapps.engine.seeding
        self.out = out = Path(cfg.out)
        self.splits = splits = task.build_datasets(cfg)
        check_class_names(splits.class_names, str(cfg.data.root))  # before an epoch is spent: names reach files
        _require_labels(splits.train, cfg.data.root)
        self.model = model = task.build_model(cfg, splits.class_names).to(device)
        if cfg.model.weights and not cfg.train.resume:
            init_from_checkpoint(model, cfg.model.weights, self.log)
        self.train_sampler = dist.train_sampler(splits.train, ctx, cfg.train.seed)
        self.train_loader = make_loader(task, splits.train, cfg, shuffle=True, device=device,
                                        sampler=self.train_sampler, rank=ctx.rank)
        self.optimizer = build_optimizer(model, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, cfg.train.epochs * max(1, len(self.train_loader)))
        self.use_amp = cfg.train.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.start_epoch, self.best, self.history = 0, -math.inf, []
        if cfg.train.resume:
            self.start_epoch, self.best, self.history = _resume(out / "last.pt", cfg, model, self.optimizer,
                                                                self.scheduler, self.scaler, self.log)
        if ctx.is_main:
            ensure_dir(out)
            self.log(f"{task.name}: {len(splits.train)} train / {len(splits.val)} val images, "
                     f"{len(splits.class_names)} classes, {_count_params(model):,} parameters, device {device}"
                     + (f", {ctx.world_size} processes" if ctx.enabled else ""))
        self.ddp_model = dist.wrap(model, ctx, find_unused=task.ddp_find_unused_parameters)
        self.hooks: list[HookBase] = []
        self.epoch, self.step, self.stop, self.improved = self.start_epoch, 0, False, False
        self.losses: dict[str, torch.Tensor] = {}  # the last step's loss dict; `loss` is their sum
        self.loss: torch.Tensor | None = None
        self.row: dict[str, float] = {}
        self._norm_buffers = _norm_buffers(model)
        self._bad_steps = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 (always, without DDP): the process that evaluates and writes files."""
        return self.ctx.is_main

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        for hook in hooks:
            if not isinstance(hook, HookBase):
                raise TypeError(f"{hook!r} is not a HookBase")
            hook.trainer = self
            self.hooks.append(hook)

    def _call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)()

    def train(self) -> TrainResult:
        """Run the epochs from ``start_epoch`` (or until a hook sets ``stop``); then ``after_train``."""
        self._call("before_train")
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            self.epoch = epoch
            self._call("before_epoch")
            self.run_epoch()
            self._call("after_epoch")
            dist.barrier(self.ctx)
            # Any rank may ask (rank 0 alone sees val metrics); all must leave the loop together.
            self.stop = not dist.all_true(not self.stop, self.ctx)
            if self.stop:
                if self.epoch + 1 < self.cfg.train.epochs:
                    self.log(f"training stopped after epoch {self.epoch + 1} of {self.cfg.train.epochs}")
                break
        self._call("after_train")
        dist.dump_rank_weights(unwrap(self.ddp_model), self.ctx)
        dist.cleanup(self.ctx)
        self.log(f"done: best {self.task.primary_metric} {self.best:.4f}; checkpoints in {self.out}")
        return TrainResult(self.out, self.best, self.history)

    def run_epoch(self) -> None:
        """One pass over the train split; its ``row`` (lr, time, mean losses) is appended to ``history``."""
        cfg, ctx = self.cfg, self.ctx
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(self.epoch)
        elif self.train_loader.generator is not None:
            # The shuffle order depends on the epoch only, so a resumed run sees the same order.
            self.train_loader.generator.manual_seed(cfg.train.seed + self.epoch)
        if cfg.data.workers == 0:  # augmentation in this process (workers seed their own: worker_init)
            seed_augment(self.splits.train, epoch_seed(cfg.train.seed + ctx.rank, self.epoch))
        self.ddp_model.train()
        sums: dict[str, float] = {}
        seen, t0 = 0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
                   disable=not (self.progress and ctx.is_main), leave=True, dynamic_ncols=True,
                   mininterval=progress_interval())
        for step, (images, targets) in enumerate(bar):
            self.step = step
            if len(images) == 0 or not self.run_step(images, targets):
                continue
            seen += len(images)
            for k, v in self.losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(images)
            sums["loss"] = sums.get("loss", 0.0) + float(self.loss.detach()) * len(images)
            self._call("after_step")
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", refresh=False,
                            img_s=f"{seen * ctx.world_size / (time.perf_counter() - t0):.0f}")
        dist.average_buffers(self.model, ctx)  # BatchNorm statistics: same on every rank before eval/save
        self.row = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                    "time_s": round(time.perf_counter() - t0, 2)}
        self.row.update({f"train/{k}": v / max(1, seen) for k, v in sums.items()})
        self.history.append(self.row)  # the hooks add to it (val metrics)

    def run_step(self, images: Any, targets: Any) -> bool:
        """One optimizer step on a batch (``self.losses``, ``self.loss``); False when it was skipped
        because the loss or a gradient was not finite."""
        x = images_to_device(images, self.device)
        y = self.task.targets_to(targets, self.device)
        # BatchNorm updates its running statistics in the forward pass, before the loss is known
        # to be finite: keep a copy, so a skipped step leaves them (and the checkpoint) finite.
        saved = [b.clone() for b in self._norm_buffers]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            losses = self.ddp_model(x, y)
        loss = sum(losses.values())
        # Every rank must take the same branch (dist.all_finite), or DDP's all-reduce hangs.
        if not dist.all_finite(loss, self.ctx):
            return self._skip_step("loss", saved)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            # Under AMP the scaler skips inf gradients itself (routine while it calibrates);
            # in fp32 they would write NaN into the weights. Gradients are already all-reduced,
            # so every rank sees the same norm.
            if not self.use_amp and not torch.isfinite(norm):
                return self._skip_step("gradient", saved)
        self._bad_steps = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.losses, self.loss = losses, loss
        return True

    def _skip_step(self, what: str, saved: list[torch.Tensor]) -> bool:
        """Undo one non-finite step (loss or gradient); too many in a row stop training."""
        _restore(self._norm_buffers, saved)
        self._bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        max_bad = self.cfg.train.max_bad_steps
        self.log(f"warning: non-finite {what} at epoch {self.epoch + 1} step {self.step + 1}; step skipped "
                 f"({self._bad_steps}/{max_bad} in a row)")
        if self._bad_steps >= max_bad:
            self.fail(f"{self._bad_steps} non-finite {what}{'es' if what == 'loss' else 's'} in a row at epoch "
                      f"{self.epoch + 1} (try a lower train.lr or check the data)")
        return False

    def fail(self, reason: str) -> NoReturn:
        """End training with one line that says why and which checkpoint is the last good one."""
        last = self.out / "last.pt"
        where = (f"the last good checkpoint is {last} (resume with train.resume=true)" if last.exists()
                 else "no checkpoint was written yet")
        dist.cleanup(self.ctx)
        raise CvappsError(f"training stopped: {reason}; {where}")


def _quiet(msg: str) -> None:
    """The log of ranks other than 0: only rank 0 speaks."""


def _require_labels(dataset: Any, root: str) -> None:
    """A detection train split whose every annotation was dropped (or that has none) is an error,
    not a run that learns from 0 boxes. Datasets without ``records`` carry a label per sample."""
    records = getattr(dataset, "records", None)
    if not isinstance(records, list) or not records or not hasattr(records[0], "boxes"):
        return
    if sum(len(r.boxes) for r in records) == 0:
        report = getattr(getattr(dataset, "split", None), "report", None)
        found = f" ({report.summary()})" if report is not None else ""
        raise DataError(f"{root}: the train split has no usable annotations{found}; "
                        f"see the report of `cvapps data check {root}`")


def _norm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Running statistics of every BatchNorm layer (updated in place by the forward pass)."""
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in m.buffers(recurse=False)]


@torch.no_grad()
def _restore(buffers: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    for buf, copy in zip(buffers, saved):
        buf.copy_(copy)


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _resume(path: Path, cfg: TaskConfig, model, optimizer, scheduler, scaler, log) -> tuple[int, float, list]:
    if not path.exists():
        raise CvappsError(f"train.resume=true but {path} does not exist; train once without resume first")
    ckpt = load_checkpoint(path, cfg.task)
    state = ckpt.get("train_state")
    if not state:
        raise CvappsError(f"{path} holds no optimizer state to resume from")
    load_state(model, ckpt["model"], str(path))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    log(f"resuming from {path} after epoch {ckpt['epoch']}")
    return int(ckpt["epoch"]), float(state["best"]), list(state.get("history", []))


def init_from_checkpoint(model: nn.Module, path: str, log: Callable[[str], None]) -> None:
    """Start from another checkpoint's weights; tensors whose shape differs (class-dependent
    layers after a change of ``num_classes``) keep their fresh initialisation, and we say so."""
    try:
        state = load_checkpoint(path)["model"]
    except ForeignCheckpoint:
        state = read_state_dict(path)
    report = load_state(model, state, path, reinit_prefixes=("",), strict=False)
    log(f"loaded {report.loaded} tensors from {path}")
    if report.reinit:
        log(f"re-initialised {len(report.reinit)} class-dependent tensors (different class count): "
            f"{', '.join(report.reinit[:4])}" + (" ..." if len(report.reinit) > 4 else ""))
    if report.missing:
        log(f"note: {len(report.missing)} tensors not in {path} keep their initialisation: {', '.join(report.missing[:3])}")
