"""The task modules (classify, segment, faster_rcnn, yolo, multitask; plus native ultralytics models), looked up by the config's ``task`` key."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from cvapps.config import TaskConfig, deep_merge, parse_overrides, read_yaml, validate
from cvapps.errors import ConfigError, shorten
from cvapps.tasks.base import DatasetSplits, Task

# task name -> module that defines TASK; imported lazily so `cvapps classify` never loads YOLO code.
TASK_MODULES = {
    "classify": "cvapps.tasks.classify",
    "segment": "cvapps.tasks.segment",
    "faster_rcnn": "cvapps.tasks.faster_rcnn",
    "yolo": "cvapps.tasks.yolo",
    "ultralytics": "cvapps.tasks.ultralytics_native",
    "multitask": "cvapps.tasks.multitask",
}


def get_task(name: object) -> Task:
    if name is None:
        raise ConfigError(f"config error: task: required key is missing (one of: {', '.join(TASK_MODULES)})")
    if not isinstance(name, str) or name not in TASK_MODULES:
        what = "unknown task" if isinstance(name, str) else "should be a task name, got"
        raise ConfigError(f"config error: task: {what} {shorten(name)} (one of: {', '.join(TASK_MODULES)})")
    try:
        module = importlib.import_module(TASK_MODULES[str(name)])
    except ModuleNotFoundError as exc:
        if exc.name == TASK_MODULES[str(name)]:
            raise ConfigError(f"config error: task {name!r} is not available in this version of cvapps") from None
        raise
    return module.TASK


def load_config(path: str | Path, overrides: list[str] | None = None) -> TaskConfig:
    """Read a YAML config, apply dotted overrides, and validate it against its task's schema."""
    raw = deep_merge(read_yaml(path), parse_overrides(overrides or []))
    return validate(get_task(raw.get("task")).config_class, raw, str(path))


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> TaskConfig:
    """Like :func:`load_config` for a dict (e.g. the config stored in a checkpoint)."""
    raw = deep_merge(raw, parse_overrides(overrides or []))
    return validate(get_task(raw.get("task")).config_class, raw)


__all__ = ["DatasetSplits", "Task", "TASK_MODULES", "config_from_dict", "get_task", "load_config"]
