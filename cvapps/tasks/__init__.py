"""The four task modules (plus native ultralytics models), looked up by the config's ``task`` key."""

from __future__ import annotations

import importlib

from cvapps.errors import ConfigError, shorten
from cvapps.tasks.base import DatasetSplits, Task

# task name -> module that defines TASK; imported lazily so `cvapps classify` never loads YOLO code.
TASK_MODULES = {
    "classify": "cvapps.tasks.classify",
    "segment": "cvapps.tasks.segment",
    "faster_rcnn": "cvapps.tasks.faster_rcnn",
    "yolo": "cvapps.tasks.yolo",
    "ultralytics": "cvapps.tasks.ultralytics_native",
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


__all__ = ["DatasetSplits", "Task", "TASK_MODULES", "get_task"]
