"""The task modules (classify, segment, faster_rcnn, yolo, multitask; plus native ultralytics models), looked up by the
config's ``task`` key in the registry (:mod:`cvapps.tasks.registry`), where each registers itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvapps.config import TaskConfig, deep_merge, parse_overrides, read_yaml, validate
from cvapps.tasks.base import DatasetSplits, OnnxExport, Task
from cvapps.tasks.registry import (
    COMMANDS,
    TASK_MODULES,
    TASKS,
    all_tasks,
    get_task,
    register_task,
    tasks_predicting,
    tasks_serving,
)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TaskConfig:
    """Read a YAML config, apply dotted overrides, and validate it against its task's schema."""
    raw = deep_merge(read_yaml(path), parse_overrides(overrides or []))
    return validate(get_task(raw.get("task")).config_class, raw, str(path))


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> TaskConfig:
    """Like :func:`load_config` for a dict (e.g. the config stored in a checkpoint)."""
    raw = deep_merge(raw, parse_overrides(overrides or []))
    return validate(get_task(raw.get("task")).config_class, raw)


__all__ = ["COMMANDS", "TASKS", "TASK_MODULES", "DatasetSplits", "OnnxExport", "Task", "all_tasks", "config_from_dict",
           "get_task", "load_config", "register_task", "tasks_predicting", "tasks_serving"]
