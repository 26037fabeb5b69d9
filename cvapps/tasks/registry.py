"""The task registry: each task module registers its :class:`~cvapps.tasks.base.Task` where it is
defined (``@register_task``, as timm's ``register_model``), and the task's class declares what it can do
(prediction parts, postprocess options, CLI commands, ONNX export, ...; see :class:`Task`). Code
outside ``cvapps/tasks`` asks the task or this registry, never compares task names.

This module imports no task module. :data:`TASK_MODULES` names the module that registers each task,
and :func:`get_task` imports just that one on first use, so a run pays only for its model's family
(Faster R-CNN's module pulls in torchvision: ~2 s of start-up a YOLO or classifier run must not pay).
A query over every task (:func:`all_tasks`, :func:`tasks_predicting`, :func:`tasks_serving`) imports
them all: it serves error messages, listings and tests, never the start-up of a run. The tests check
this table against what the modules register.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

from cvapps.errors import ConfigError, shorten

if TYPE_CHECKING:
    from cvapps.tasks.base import Task

TaskT = TypeVar("TaskT", bound="Task")

# Task name -> the module that registers it (imported lazily, see the module doc).
TASK_MODULES: dict[str, str] = {
    "classify": "cvapps.tasks.classify",
    "segment": "cvapps.tasks.segment",
    "faster_rcnn": "cvapps.tasks.faster_rcnn",
    "yolo": "cvapps.tasks.yolo",
    "ultralytics": "cvapps.tasks.ultralytics_native",
    "multitask": "cvapps.tasks.multitask",
}
#: The CLI commands (``cvapps classify|segment|detect``) a task's models may serve, and what each
#: command calls such a model (in messages).
COMMANDS: dict[str, str] = {"classify": "classifier", "segment": "segmenter", "detect": "detector"}
#: Task name -> its one registered instance.
TASKS: dict[str, Task] = {}


def register_task(cls: type[TaskT]) -> type[TaskT]:
    """Class decorator: check ``cls``'s declarations and register one instance under ``cls.name``."""
    check_declarations(cls)
    if cls.name in TASKS:
        raise TypeError(f"task {cls.name!r} is registered twice ({TASKS[cls.name].__class__.__qualname__}, "
                        f"{cls.__qualname__})")
    TASKS[cls.name] = cls()
    return cls


def check_declarations(cls: type[Task]) -> None:
    """TypeError unless ``cls`` declares every capability, with known values."""
    # imported here: only when a task registers
    from cvapps.config import TaskConfig
    from cvapps.structures.prediction import PARTS

    def fail(what: str) -> None:
        raise TypeError(f"task class {cls.__qualname__}: {what}")

    for key in ("name", "config_class", "primary_metric", "parts", "commands"):  # the ones without a default
        if not any(key in vars(k) for k in cls.__mro__):
            fail(f"declares no {key}")
    if not isinstance(cls.name, str) or not cls.name:
        fail("name must be a non-empty string")
    if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, TaskConfig)):
        fail("config_class must be a TaskConfig subclass")
    if not cls.parts or not set(cls.parts) <= set(PARTS):
        fail(f"parts {sorted(cls.parts)} must be some of {list(PARTS)}")
    if not set(cls.commands) <= set(COMMANDS):
        fail(f"commands {sorted(cls.commands)} must be some of {list(COMMANDS)}")
    if cls.onnx is not None and (not cls.onnx.outputs or cls.onnx.parity_atol <= 0):
        fail("onnx must name its outputs and a positive parity_atol")


def get_task(name: object) -> Task:
    """The registered task called ``name`` (its module imported on first use); ConfigError otherwise."""
    known = ", ".join(dict.fromkeys([*TASK_MODULES, *TASKS]))
    if name is None:
        raise ConfigError(f"config error: task: required key is missing (one of: {known})")
    if not isinstance(name, str) or (name not in TASKS and name not in TASK_MODULES):
        what = "unknown task" if isinstance(name, str) else "should be a task name, got"
        raise ConfigError(f"config error: task: {what} {shorten(name)} (one of: {known})")
    if name not in TASKS:
        module = TASK_MODULES[name]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                raise ConfigError(f"config error: task {name!r} is not available in this version of cvapps") from None
            raise
        if name not in TASKS:
            raise ConfigError(f"config error: task {name!r}: {module} registers no such task")
    return TASKS[name]


def all_tasks() -> list[Task]:
    """Every task, each module imported (slow: see the module doc), in :data:`TASK_MODULES` order."""
    for name in TASK_MODULES:
        get_task(name)
    return list(TASKS.values())


def tasks_predicting(part: str) -> tuple[str, ...]:
    """Names of the tasks whose predictions can carry ``part`` ("detections", "semantic", ...)."""
    return tuple(t.name for t in all_tasks() if part in t.parts)


def tasks_serving(command: str) -> tuple[str, ...]:
    """Names of the tasks whose models ``cvapps COMMAND`` runs (e.g. "detect": the detectors and multitask)."""
    return tuple(t.name for t in all_tasks() if command in t.commands)


def exportable_tasks() -> tuple[str, ...]:
    """Names of the tasks that export to ONNX."""
    return tuple(t.name for t in all_tasks() if t.onnx is not None)
