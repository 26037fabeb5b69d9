"""``cvapps val``: evaluate a checkpoint on its (or another) dataset's val split."""

from __future__ import annotations

from pathlib import Path

from cvapps.checkpoint import atomic_write_text
from cvapps.engine.device import resolve_device
from cvapps.engine.summary import model_and_config
from cvapps.engine.train import make_loader
from cvapps.tasks import get_task


def evaluate_checkpoint(path: str | Path, overrides: list[str] | None = None, out_dir: Path | None = None) -> dict[str, float]:
    import json

    model, cfg, names = model_and_config(path, overrides)
    task = get_task(cfg.task)
    device = resolve_device(cfg.train.device)
    splits = task.build_datasets(cfg)
    if list(splits.class_names) != list(names):
        from cvapps.errors import DataError

        raise DataError(f"dataset classes {splits.class_names} differ from the checkpoint's {names}")
    loader = make_loader(task, splits.val, cfg, shuffle=False, device=device)
    model.to(device)
    metrics = task.evaluate(model, splits, loader, device, out_dir=out_dir)
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / "val_metrics.json", json.dumps(metrics, indent=1))
    return metrics
