"""Layer tables (torchinfo) for configs and checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from cvapps.config import TaskConfig, read_yaml
from cvapps.engine.load import load_model
from cvapps.errors import CvappsError
from cvapps.tasks import TASK_MODULES, get_task, load_config


def model_and_config(source: str | Path, overrides: list[str] | None = None
                     ) -> tuple[torch.nn.Module, tuple[int, int, int, int], list[str]]:
    """(model, input size (1, C, S, S), class names) for a cvapps YAML config (class names from
    data.names, the dataset, or placeholders) or anything :func:`load_model` loads."""
    if str(source).endswith((".yaml", ".yml")) and Path(source).is_file() and read_yaml(source).get("task") in TASK_MODULES:
        cfg = load_config(source, overrides)
        names = cfg.data.names or _names_from_config(cfg)
        size = (1, cfg.model.in_channels, cfg.data.imgsz, cfg.data.imgsz)
        return get_task(cfg.task).build_model(cfg, names), size, names
    loaded = load_model(source, overrides=overrides)
    pre = loaded.preprocessing
    size = (1, int(pre.get("in_channels", 3)), int(pre["imgsz"]), int(pre["imgsz"]))
    return loaded.model, size, loaded.class_names


def _names_from_config(cfg: TaskConfig) -> list[str]:
    """Class names for a layer table: the dataset's when it is there, else placeholders."""
    try:
        return list(get_task(cfg.task).build_datasets(cfg).class_names)
    except (CvappsError, OSError):
        num = getattr(cfg.model, "num_classes", None)
        return [f"class{i}" for i in range(num or 2)]


def summarize(source: str | Path, overrides: list[str] | None = None, depth: int = 4) -> str:
    from torchinfo import summary  # optional heavy dependency, only for this command

    model, size, _ = model_and_config(source, overrides)
    model.eval()
    stats = summary(model, input_size=size, depth=depth, verbose=0, device="cpu",
                    col_names=("output_size", "num_params"), row_settings=("var_names",))
    return str(stats)
