"""The task registry: every registered task declares what it can do, consistently; nothing outside
``cvapps/tasks`` (and the config) names a task or probes one for a capability."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from cvapps.cli.run import TASK_OPTIONS, task_options
from cvapps.config import TaskConfig
from cvapps.engine.load import LoadedModel
from cvapps.errors import CheckpointError, ConfigError
from cvapps.structures.prediction import PARTS
from cvapps.tasks import (
    COMMANDS,
    TASK_MODULES,
    TASKS,
    Task,
    all_tasks,
    get_task,
    load_config,
    registry,
    tasks_predicting,
    tasks_serving,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(TASK_MODULES)
COMMAND_PART = {"detect": "detections", "segment": "semantic", "classify": "classification"}  # what each outputs


def test_module_table_names_the_module_that_registers_each_task() -> None:
    all_tasks()
    assert set(TASKS) == set(TASK_MODULES)
    for name, task in TASKS.items():
        assert type(task).__module__ == TASK_MODULES[name]


def test_importing_the_package_imports_no_task_module() -> None:
    code = ("import sys, cvapps, cvapps.cli, cvapps.api; from cvapps.tasks import TASK_MODULES; "
            "print(' '.join(m for m in TASK_MODULES.values() if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("name", NAMES)
def test_task_declares_every_capability_consistently(name: str) -> None:
    task = get_task(name)
    module = importlib.import_module(TASK_MODULES[name])
    assert task is TASKS[name] is module.TASK and task.name == name
    assert issubclass(task.config_class, TaskConfig) and task.primary_metric
    assert task.parts and set(task.parts) <= set(PARTS)
    assert task.commands and set(task.commands) <= set(COMMANDS)
    for command in task.commands:  # a command it serves gets the part that command outputs (as_part)
        assert COMMAND_PART[command] in task.parts
    assert task.part is None  # registered tasks predict whole models
    assert not task.tracks or "detections" in task.parts
    # its postprocess takes what it declares, and evaluation passes only those
    params = inspect.signature(task.postprocess).parameters
    assert set(task.postprocess_options) <= set(params), set(task.postprocess_options) - set(params)
    assert set(task.eval_options) <= set(task.postprocess_options)
    # trains externally exactly when it brings its own trainer
    assert task.trains_externally == (type(task).train_external is not Task.train_external)
    if task.onnx is not None:
        names = [out for out, _ in task.onnx.outputs]
        assert len(set(names)) == len(names) and task.onnx.parity_atol > 0 and not task.onnx_refusal
    assert task.rect_stride is None or task.rect_stride > 0
    assert task.describe().endswith(" model")


def test_registry_queries() -> None:
    assert sorted(tasks_predicting("detections")) == sorted(("faster_rcnn", "yolo", "ultralytics", "multitask"))
    assert sorted(tasks_serving("detect")) == sorted(("faster_rcnn", "yolo", "ultralytics", "multitask"))
    assert sorted(tasks_serving("segment")) == ["multitask", "segment"]
    assert tasks_serving("classify") == ("classify",)
    assert sorted(registry.exportable_tasks()) == sorted(("classify", "segment", "yolo", "multitask"))
    with pytest.raises(ConfigError, match="unknown task 'detector'"):
        get_task("detector")


def test_registration_checks_declarations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "TASKS", dict(TASKS))  # what registers here is forgotten after the test

    class Base(Task):
        config_class = TaskConfig
        primary_metric = "m"
        parts = frozenset({"detections"})
        commands = frozenset({"detect"})

    with pytest.raises(TypeError, match="declares no name"):
        registry.register_task(Base)
    for wrong in ({"parts": frozenset({"boxes"})}, {"commands": frozenset({"track"})}, {"name": "yolo"}):
        with pytest.raises(TypeError):
            registry.register_task(type("Wrong", (Base,), {"name": "wrong", **wrong}))
    registry.register_task(type("Plugin", (Base,), {"name": "plugin"}))
    assert get_task("plugin").parts == {"detections"}  # a task no module table names is found too


def test_cvapps_predict_options_follow_the_declarations() -> None:
    """`cvapps predict`'s per-task options, derived from the declarations, are the table it had."""
    boxes = ("faster_rcnn", "yolo", "ultralytics", "multitask")
    table = {"topk": ("classify",), "alpha": ("segment",), "no_overlay": ("segment",),
             "no_masks": ("segment", "multitask"), **dict.fromkeys(("conf", "iou", "max_det", "no_images"), boxes),
             **dict.fromkeys(("track", "track_buffer", "count_line", "zone"), boxes[:3]),
             **dict.fromkeys(("save_json", "coco_gt"), ("segment", *boxes))}
    assert set(table) == set(TASK_OPTIONS)
    for name in NAMES:
        assert task_options(get_task(name)) == {dest for dest, tasks in table.items() if name in tasks}, name


def _loaded(name: str, raw_config: dict | None = None) -> LoadedModel:
    return LoadedModel(get_task(name), nn.Identity(), ["a", "b"], None, {"imgsz": 64}, "m.pt", raw_config=raw_config)


def test_as_part_takes_what_a_task_serves() -> None:
    loaded = _loaded("yolo")
    assert loaded.task.as_part(loaded, "detect") is loaded
    with pytest.raises(CheckpointError, match=r"^m\.pt is a 'yolo' model; this needs a segmenter \(a model of task "
                                              r"'segment' or 'multitask'\)$"):
        loaded.task.as_part(loaded, "segment")
    with pytest.raises(ValueError, match="part must be one of"):
        loaded.task.as_part(loaded, "boxes")


def test_a_multitask_model_declares_the_parts_of_its_heads() -> None:
    cfg = load_config(ROOT / "configs" / "multitask_shapes.yaml", ["model.heads.classify=null"])
    loaded = _loaded("multitask", cfg.model_dump(mode="json"))
    task = loaded.task
    assert task.parts == {"detections", "semantic", "presence"}
    assert task.parts_of(loaded.raw_config) == {"detections", "semantic"}
    masks = task.as_part(loaded, "segment")
    assert masks.task.part == "segment" and masks.task.parts == {"semantic"} and masks.task.commands == {"segment"}
    assert masks.class_names == ["background", "a", "b"] and masks.task.parts_of(masks.raw_config) == {"semantic"}
    assert masks.task.as_part(masks, "segment") is masks
    with pytest.raises(CheckpointError, match="this needs a detector"):
        masks.task.as_part(masks, "detect")
    boxes = task.as_part(loaded, "detect")
    assert boxes.task.part == "detect" and boxes.task.parts == {"detections"} and boxes.task.tracks
    no_masks = _loaded("multitask", load_config(ROOT / "configs" / "multitask_shapes.yaml",
                                                ["model.heads.segment=null"]).model_dump(mode="json"))
    with pytest.raises(CheckpointError, match="without a segment head"):
        task.as_part(no_masks, "segment")


# --- nothing outside cvapps/tasks names a task or probes one --------------------------------------
def _outside_files() -> list[Path]:
    files = [p for p in (ROOT / "cvapps").rglob("*.py")
             if not p.is_relative_to(ROOT / "cvapps" / "tasks") and p != ROOT / "cvapps" / "config.py"]
    return sorted(files) + sorted((ROOT / "pipelines").glob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree) if isinstance(node, nodes) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def _command_names(tree: ast.AST) -> set[int]:
    """String arguments that are command names by the API's contract: ``Model.part("segment")``,
    ``load_model(..., part="classify")`` (pipelines) and argparse's ``add_parser("classify")``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in ("part", "add_parser") and node.args:
                found.add(id(node.args[0]))
            found |= {id(k.value) for k in node.keywords if k.arg == "part"}
    return found


# Where a task's name is also the name of something else: path (a file, or a folder ending in /) ->
# which names, and what they are there.
NOT_TASK_NAMES = {
    "cvapps/metrics/multitask.py": {"segment", "classify"},  # the multitask heads (config keys)
    "cvapps/results.py": {"segment", "classify"},  # part -> multitask head
    "cvapps/demo.py": {"classify", "segment"},  # sample_data folders and model files, by command
    "cvapps/data/synth.py": {"classify"},  # the synthetic dataset's class folders
    "cvapps/data/": {"yolo"},  # the YOLO dataset layout
    "cvapps/formats/": {"yolo"},
    "cvapps/cli/data.py": {"yolo"},
    "cvapps/ultralytics_parts.py": {"ultralytics"},  # the package
    "cvapps/cli/__init__.py": {"ultralytics"},  # its logger
}


def _other_names(rel: str) -> set[str]:
    return set().union(*(names for path, names in NOT_TASK_NAMES.items()
                         if rel == path or (path.endswith("/") and rel.startswith(path))))


def test_no_task_name_outside_the_tasks_and_the_config() -> None:
    found = []
    for path in _outside_files():
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree) | _command_names(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and node.value in TASK_MODULES and id(node) not in skip
                    and node.value not in _other_names(rel)):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found, "task names outside cvapps/tasks (ask the task's declarations instead):\n" + "\n".join(found)


CAPABILITIES = {"part", "parts", "commands", "postprocess_options", "tracks", "trains_externally", "train_external",
                "onnx", "fixed_input_size", "fixed_size", "label"}


def test_no_capability_probes() -> None:
    found = []
    for path in _outside_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in CAPABILITIES):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "capability probes (tasks declare these; read them):\n" + "\n".join(found)

