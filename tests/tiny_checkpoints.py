"""Randomly initialised checkpoints in the trainer's layout, for tests that need a model but no training."""

from __future__ import annotations

from pathlib import Path

import torch

from cvapps.checkpoint import save_checkpoint
from cvapps.tasks import load_config
from cvapps.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["circle", "square", "triangle"]


def make_checkpoint(path: Path, config: str, overrides: list[str], class_names: list[str],
                    category_ids: list[int] | None = None) -> Path:
    """Build ``configs/<config>`` (+ overrides) with seed 0 and save it as a cvapps checkpoint."""
    cfg = load_config(ROOT / "configs" / config, ["data.root=unused", "train.device=cpu", *overrides])
    task = get_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg, class_names)
    save_checkpoint(path, {
        "task": task.name, "config": cfg.model_dump(mode="json"), "class_names": class_names,
        "category_ids": category_ids,
        "preprocessing": {"imgsz": cfg.data.imgsz, "resize": task.resize_mode, "in_channels": cfg.model.in_channels},
        "model": model.state_dict(),
    })
    return path


def multitask_checkpoint(path: Path, cfg, mask_class: int) -> Path:
    """A randomly initialised multitask checkpoint (seed 0) of ``cfg`` (a MultiTaskConfig) whose mask
    says ``mask_class`` (a mask value: class ``mask_class - 1``) everywhere, so its segmentation
    outputs are not empty."""
    task = get_task("multitask")
    torch.manual_seed(0)
    model = task.build_model(cfg, SHAPES)
    with torch.no_grad():
        model.heads["segment"].score32.bias[mask_class] = 5.0
    save_checkpoint(path, {"task": "multitask", "config": cfg.model_dump(mode="json"), "class_names": SHAPES,
                           "category_ids": [1, 2, 3], "preprocessing": task.preprocessing(cfg),
                           "model": model.state_dict()})
    return path
