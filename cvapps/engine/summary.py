"""Layer tables (torchinfo) for configs and checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from cvapps.checkpoint import load_checkpoint
from cvapps.config import TaskConfig, config_from_dict, load_config
from cvapps.tasks import get_task


def model_and_config(source: str | Path, overrides: list[str] | None = None) -> tuple[torch.nn.Module, TaskConfig, list[str]]:
    """A model built from a YAML config (class names from data.names, or 2 placeholders) or a checkpoint."""
    if str(source).endswith((".yaml", ".yml")):
        cfg = load_config(source, overrides)
        names = cfg.data.names or _names_from_config(cfg)
        return get_task(cfg.task).build_model(cfg, names), cfg, names
    ckpt = load_checkpoint(source)
    cfg = config_from_dict(ckpt["config"], ["model.pretrained=false", "model.backbone_weights=null",
                                            "model.weights=null", *(overrides or [])])
    model = get_task(cfg.task).build_model(cfg, ckpt["class_names"])
    model.load_state_dict(ckpt["model"])
    return model, cfg, ckpt["class_names"]


def _names_from_config(cfg: TaskConfig) -> list[str]:
    """Class names for a layer table: the dataset's when it is there, else placeholders."""
    from cvapps.errors import CvappsError

    try:
        return list(get_task(cfg.task).build_datasets(cfg).class_names)
    except (CvappsError, OSError):
        num = getattr(cfg.model, "num_classes", None)
        return [f"class{i}" for i in range(num or 2)]


def summarize(source: str | Path, overrides: list[str] | None = None, depth: int = 4) -> str:
    from torchinfo import summary

    model, cfg, _ = model_and_config(source, overrides)
    model.eval()
    size = (1, cfg.model.in_channels, cfg.data.imgsz, cfg.data.imgsz)
    stats = summary(model, input_size=size, depth=depth, verbose=0, device="cpu",
                    col_names=("output_size", "num_params"), row_settings=("var_names",))
    return str(stats)
