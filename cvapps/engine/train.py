"""The one training loop: it builds what the task says, sums the loss dict the model returns,
evaluates, and writes ``last.pt``/``best.pt``/plots into ``cfg.out``; each epoch's metrics go to
the loggers ``train.log`` names and the caller's callbacks (:mod:`cvapps.engine.loggers`).

Nothing here knows which task it trains: datasets, model, collate and metrics come from the
:class:`~cvapps.tasks.base.Task`, so classification, FCN, Faster R-CNN and YOLO share this code.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cvapps.backbones.weights import load_state, read_state_dict
from cvapps.checkpoint import ForeignCheckpoint, load_checkpoint, save_checkpoint
from cvapps.config import TaskConfig, TrainConfig
from cvapps.engine import distributed as dist
from cvapps.engine.device import images_to_device, progress_interval, resolve_device
from cvapps.engine.evaluate import evaluate
from cvapps.engine.loggers import CallbackLike, EpochLoggers, EpochRun
from cvapps.errors import CvappsError, DataError
from cvapps.formats.names import check_class_names
from cvapps.io.guard import protected
from cvapps.io.safe_write import ensure_dir, ensure_writable_folder
from cvapps.metrics.plots import plot_history
from cvapps.tasks import get_task
from cvapps.tasks.base import DatasetSplits, Task


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
                sampler=None, batch: int | None = None) -> DataLoader:
    workers = cfg.data.workers
    return DataLoader(
        dataset, batch_size=batch or cfg.train.batch, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, collate_fn=task.collate, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, drop_last=False,
        generator=torch.Generator().manual_seed(cfg.train.seed) if shuffle else None,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def train(cfg: TaskConfig, *, progress: bool = True, log: Callable[[str], None] = print,
          trust: bool = False, callbacks: Iterable[CallbackLike] = ()) -> TrainResult:
    """Train ``cfg``'s task end to end; returns where the checkpoints are and the metric history.

    trust: allow a full unpickle of model files that need one (native ultralytics models only).
    callbacks: callables ``fn(run, metrics)`` or objects with ``on_epoch_end(run, metrics)``, called
    after every epoch on rank 0 with that epoch's metrics.csv row (see :mod:`cvapps.engine.loggers`).
    """
    task = get_task(cfg.task)
    # OUT is an output root (every file written inside it through no link) that may not lie in the
    # dataset (the next run would train on the plots) nor hold the starting weights (replaced by best.pt)
    with protected(cfg.out, folders=[cfg.data.root], files=_start_files(cfg), option="out="):
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
           callbacks: Iterable[CallbackLike]) -> TrainResult:
    loggers = EpochLoggers(cfg.train.log, callbacks)  # a missing tensorboard fails here, before training
    if hasattr(task, "train_external"):  # e.g. native ultralytics models train with their own trainer
        best, history = task.train_external(cfg, resolve_device(cfg.train.device), progress=progress,
                                            trust=trust, log=log)
        out = Path(cfg.out).resolve()
        # Their trainer has no per-epoch hook of ours: replay its history once it is done.
        for i, row in enumerate(history):
            loggers.on_epoch_end(EpochRun(out, int(row.get("epoch", i + 1)), cfg.train.epochs, history[: i + 1]), row)
        loggers.close()
        return TrainResult(out, best, history)
    ctx = dist.setup(cfg.train.device)
    device = ctx.device if ctx.enabled else resolve_device(cfg.train.device)
    log = log if ctx.is_main else (lambda msg: None)
    torch.manual_seed(cfg.train.seed + ctx.rank)
    out = Path(cfg.out)

    splits = task.build_datasets(cfg)
    check_class_names(splits.class_names, str(cfg.data.root))  # before an epoch is spent: names reach files
    _require_labels(splits.train, cfg.data.root)
    model = task.build_model(cfg, splits.class_names).to(device)
    if cfg.model.weights and not cfg.train.resume:
        init_from_checkpoint(model, cfg.model.weights, log)
    train_sampler = dist.train_sampler(splits.train, ctx, cfg.train.seed)
    train_loader = make_loader(task, splits.train, cfg, shuffle=True, device=device, sampler=train_sampler)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, cfg.train.epochs * max(1, len(train_loader)))
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best, history = 0, -math.inf, []
    if cfg.train.resume:
        start_epoch, best, history = _resume(out / "last.pt", cfg, model, optimizer, scheduler, scaler, log)
    if ctx.is_main:
        ensure_dir(out)
        log(f"{task.name}: {len(splits.train)} train / {len(splits.val)} val images, "
            f"{len(splits.class_names)} classes, {_count_params(model):,} parameters, device {device}"
            + (f", {ctx.world_size} processes" if ctx.enabled else ""))
    ddp_model = dist.wrap(model, ctx)
    norm_buffers = _norm_buffers(model)

    bad_steps = 0
    for epoch in range(start_epoch, cfg.train.epochs):
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        elif train_loader.generator is not None:
            # The shuffle order depends on the epoch only, so a resumed run sees the same order.
            train_loader.generator.manual_seed(cfg.train.seed + epoch)
        ddp_model.train()
        sums: dict[str, float] = {}
        seen, t0 = 0, time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not (progress and ctx.is_main),
                   leave=True, dynamic_ncols=True, mininterval=progress_interval())
        for step, (images, targets) in enumerate(bar):
            if len(images) == 0:
                continue
            x = images_to_device(images, device)
            y = task.targets_to(targets, device)
            # BatchNorm updates its running statistics in the forward pass, before the loss is known
            # to be finite: keep a copy, so a skipped step leaves them (and the checkpoint) finite.
            saved = [b.clone() for b in norm_buffers]
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                losses = ddp_model(x, y)
            loss = sum(losses.values())
            # Every rank must take the same branch (dist.all_finite), or DDP's all-reduce hangs.
            if not dist.all_finite(loss, ctx):
                _restore(norm_buffers, saved)
                bad_steps = _bad_step(bad_steps, "loss", epoch, step, cfg, out, optimizer, ctx, log)
                continue
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip:
                scaler.unscale_(optimizer)
                norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                # Under AMP the scaler skips inf gradients itself (routine while it calibrates);
                # in fp32 they would write NaN into the weights. Gradients are already all-reduced,
                # so every rank sees the same norm.
                if not use_amp and not torch.isfinite(norm):
                    _restore(norm_buffers, saved)
                    bad_steps = _bad_step(bad_steps, "gradient", epoch, step, cfg, out, optimizer, ctx, log)
                    continue
            bad_steps = 0
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(images)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(images)
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * len(images)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", img_s=f"{seen * ctx.world_size / (time.perf_counter() - t0):.0f}", refresh=False)
        dist.average_buffers(model, ctx)  # BatchNorm statistics: same on every rank before eval/save
        row: dict[str, float] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                                 "time_s": round(time.perf_counter() - t0, 2)}
        row.update({f"train/{k}": v / max(1, seen) for k, v in sums.items()})
        last_epoch = epoch + 1 == cfg.train.epochs
        if ctx.is_main and ((epoch + 1) % cfg.train.val_every == 0 or last_epoch):
            metrics = evaluate(task, model, splits, task.preprocessing(cfg), device, batch=cfg.train.batch,
                               category_ids=_category_ids(splits))
            row.update({f"val/{k}": v for k, v in metrics.items()})
        history.append(row)
        score = row.get(f"val/{task.primary_metric}")
        improved = score is not None and score > best
        if improved:
            best = score
        _require_finite(model, epoch, out, ctx)  # every rank holds the same weights: same branch
        if ctx.is_main:
            state = _checkpoint(cfg, task, model, splits, epoch + 1, row,
                                {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "scaler": scaler.state_dict(), "best": best, "history": history})
            save_checkpoint(out / "last.pt", state)
            if improved:
                save_checkpoint(out / "best.pt", {**state, "train_state": None})
            loggers.on_epoch_end(EpochRun(out, epoch + 1, cfg.train.epochs, history), row)
            plot_history(history, out)
            shown = ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in row.items() if k.startswith("val/") and
                              isinstance(v, float) and "/" not in k.split("/", 1)[1])
            log(f"epoch {epoch + 1}: loss {row.get('train/loss', float('nan')):.4f}" + (f", {shown}" if shown else ""))
        dist.barrier(ctx)
    if ctx.is_main and not (out / "best.pt").exists() and (out / "last.pt").exists():
        # No evaluation ran an improvement (e.g. every epoch resumed); keep the contract: best.pt exists.
        save_checkpoint(out / "best.pt", {**load_checkpoint(out / "last.pt"), "train_state": None})
    loggers.close()
    dist.dump_rank_weights(unwrap(ddp_model), ctx)
    dist.cleanup(ctx)
    if ctx.is_main:
        log(f"done: best {task.primary_metric} {best:.4f}; checkpoints in {out}")
    return TrainResult(out, best, history)


def _bad_step(bad_steps: int, what: str, epoch: int, step: int, cfg: TaskConfig, out: Path,
              optimizer: torch.optim.Optimizer, ctx, log: Callable[[str], None]) -> int:
    """Count one skipped step (non-finite loss or gradient); too many in a row stop training."""
    bad_steps += 1
    optimizer.zero_grad(set_to_none=True)
    log(f"warning: non-finite {what} at epoch {epoch + 1} step {step + 1}; step skipped "
        f"({bad_steps}/{cfg.train.max_bad_steps} in a row)")
    if bad_steps >= cfg.train.max_bad_steps:
        _stop_training(ctx, out, f"{bad_steps} non-finite {what}{'es' if what == 'loss' else 's'} in a row at epoch "
                                 f"{epoch + 1} (try a lower train.lr or check the data)")
    return bad_steps


def _stop_training(ctx, out: Path, reason: str) -> NoReturn:
    """End training with one line that says why and which checkpoint is the last good one."""
    last = out / "last.pt"
    where = (f"the last good checkpoint is {last} (resume with train.resume=true)" if last.exists()
             else "no checkpoint was written yet")
    dist.cleanup(ctx)
    raise CvappsError(f"training stopped: {reason}; {where}")


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


def _require_finite(model: nn.Module, epoch: int, out: Path, ctx) -> None:
    """Never save non-finite weights as last/best: stop with the last good checkpoint instead."""
    bad = [k for k, v in unwrap(model).state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        _stop_training(ctx, out, f"{len(bad)} tensors of the model are not finite after epoch {epoch + 1} "
                                 f"(e.g. {bad[0]}), so they were not saved")


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _checkpoint(cfg: TaskConfig, task: Task, model: nn.Module, splits: DatasetSplits, epoch: int,
                metrics: dict[str, Any], train_state: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": task.name,
        "config": cfg.model_dump(mode="json"),
        "class_names": list(splits.class_names),
        "category_ids": _category_ids(splits),
        "preprocessing": task.preprocessing(cfg),
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "epoch": epoch,
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        "train_state": train_state,
    }


def _category_ids(splits: DatasetSplits) -> list[int] | None:
    return getattr(splits, "category_ids", None) or getattr(splits.val_extra, "category_ids", None)


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
