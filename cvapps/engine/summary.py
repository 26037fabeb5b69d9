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
    return f"{stats}\n{parts(model)}"


def parts(model: torch.nn.Module) -> str:
    """Parameters per part: each top-level module (a ModuleDict, e.g. a multi-task model's
    ``heads``, one line per entry), so a shared backbone shows up once and each head by name."""
    rows = []
    for name, child in model.named_children():
        entries = child.named_children() if isinstance(child, torch.nn.ModuleDict) else [(None, child)]
        for sub, module in entries:
            count = sum(p.numel() for p in module.parameters())
            if count:
                rows.append((f"{name}.{sub}" if sub else name, type(module).__name__, count))
    width = max((len(n) for n, _, _ in rows), default=4)
    return "parts:\n" + "\n".join(f"  {n:<{width}}  {kind:<24} {count:>12,}" for n, kind, count in rows)
