"""The one evaluation loop (training's per-epoch validation and ``cvapps val``).

It runs the model over the val split through the same :class:`~cvapps.engine.predict.Predictor`
that ``cvapps classify|segment|detect`` use (same rect letterbox per image, same postprocess back
to original pixels), and hands each batch of predictions with its targets to the task's metric
object (``reset / process / summarize / plot``, :mod:`cvapps.metrics`). So ``cvapps val`` and an
outside COCOeval of ``cvapps detect --save-json`` score the very same boxes.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from cvapps.checkpoint import atomic_write_text
from cvapps.engine.device import resolve_device
from cvapps.engine.load import load_model
from cvapps.engine.predict import PredictOptions, Predictor
from cvapps.engine.slicing import SliceOptions, SlicedPredictor, tile_slicing
from cvapps.errors import DataError, ImageReadError
from cvapps.io.guard import protected
from cvapps.structures import Frame
from cvapps.tasks.base import DatasetSplits, Task


@dataclass(frozen=True)
class EvalOptions:
    """How :func:`evaluate` runs and what it writes besides the metrics.

    batch: images per forward pass (as ``--batch`` of the predict commands).
    out_dir: where the metric's plots go; None: no plots.
    category_ids: the model's COCO id of each class (None: class i is id i + 1), as the
      :class:`~cvapps.engine.predict.Predictor` takes them.
    """

    batch: int = 8
    out_dir: Path | None = None
    category_ids: list[int] | None = None
    slicing: SliceOptions | None = None  # predict each image in slices (a model trained on tiles)


def evaluate(task: Task, model: nn.Module, splits: DatasetSplits, preprocessing: dict[str, Any],
             device: torch.device, options: EvalOptions = EvalOptions()) -> dict[str, float]:
    """Metrics of ``model`` on ``splits.val``; with ``options.out_dir`` also the metric's plots there.

    The model's train/eval mode is restored afterwards (training calls this every epoch).
    """
    batch, out_dir, category_ids, slicing = options.batch, options.out_dir, options.category_ids, options.slicing
    metric = task.build_metric(splits)
    metric.reset()
    targets: dict[int, Any] = {}

    def frames() -> Iterator[Frame]:
        for index, (name, load) in enumerate(task.eval_items(splits.val)):
            try:
                image, target = load()
            except ImageReadError as exc:
                print(f"skipped {exc}", file=sys.stderr)
                continue
            targets[index] = target
            yield Frame(image, name, index, stream=name)  # a still image of the val split

    was = model.training
    # A model under training is run as it is: no folded copy, and its memory layout kept (the optimizer's
    # state matches it).
    options = PredictOptions(device=device, batch=batch, channels_last=not was, fuse=not was)
    predictor = Predictor(task, model, splits.class_names, preprocessing, options, category_ids=category_ids)
    if slicing is not None:
        predictor = SlicedPredictor(predictor, slicing)  # type: ignore[assignment]
    try:
        pending_preds, pending_targets = [], []
        for frame, prediction in predictor.predict(frames(), **task.eval_options):
            pending_preds.append(prediction)
            pending_targets.append(targets.pop(frame.index))
            if len(pending_preds) >= predictor.batch:
                metric.process(pending_preds, pending_targets)
                pending_preds, pending_targets = [], []
        if pending_preds:
            metric.process(pending_preds, pending_targets)
    finally:
        model.train(was)
    metrics = metric.summarize()
    if out_dir is not None:
        metric.plot(Path(out_dir))
    return metrics


def evaluate_checkpoint(path: str | Path, overrides: list[str] | None = None, out_dir: Path | None = None,
                        *, trust: bool = False, batch: int = 8) -> dict[str, float]:
    """``cvapps val``: any model ``cvapps train`` writes (cvapps checkpoints, native ultralytics
    ``.pt``) or exports, on the val split of its dataset (``data.root=...`` to choose another).
    Only the val split is needed. Writes ``val_metrics.json`` (and plots) to ``out_dir``.
    batch: images per forward pass, as ``--batch`` of the predict commands (same default, so the
    same images share a forward pass and the numbers match ``cvapps detect`` bit for bit)."""
    loaded = load_model(path, trust=trust, overrides=overrides)
    cfg = loaded.config
    if cfg is None:
        raise DataError(f"{path}: holds no dataset config; give data.root=DIR")
    if cfg.data.names is None:  # the checkpoint's classes, mapped by name onto the dataset's
        cfg.data.names = list(loaded.class_names)
    if out_dir is None:
        return _evaluate_loaded(loaded, cfg, None, batch)
    # out_dir: an output root (files written inside it through no link) that may not lie in the dataset
    # (plots among the images would be read back as data); the model itself is never replaced
    with protected(out_dir, folders=[cfg.data.root], others=[path], option="--out "):
        return _evaluate_loaded(loaded, cfg, Path(out_dir), batch)


def _evaluate_loaded(loaded: Any, cfg: Any, out_dir: Path | None, batch: int) -> dict[str, float]:
    task = loaded.task
    splits = task.build_datasets(cfg, val_only=True)
    if list(splits.class_names) != list(loaded.class_names):
        raise DataError(f"dataset classes {splits.class_names} differ from the checkpoint's {loaded.class_names}")
    device = resolve_device(cfg.train.device)
    metrics = evaluate(task, loaded.model, splits, loaded.preprocessing, device,
                       EvalOptions(batch=batch, out_dir=out_dir, category_ids=loaded.category_ids,
                                   slicing=tile_slicing(cfg, task)))
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / "val_metrics.json", metrics_json(metrics, digits=None))
    return metrics


def metrics_json(metrics: dict[str, float], digits: int | None = 4) -> str:
    """``metrics`` as JSON text (rounded to ``digits``): an undefined metric (NaN, e.g. the IoU of
    a class in neither the ground truth nor the predictions) is ``null``, never a bare ``NaN``,
    which is not JSON. ``cvapps val`` prints this and writes it to ``val_metrics.json``."""
    def value(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return round(v, digits) if digits is not None and isinstance(v, float) else v

    return json.dumps({k: value(v) for k, v in metrics.items()}, indent=1, allow_nan=False)
