"""Typed configs: one small tree per task, loaded from YAML with dotted ``key=value`` overrides.

Every task config has the sections ``model``, ``data``, ``train``, ``augment`` and the keys
``task`` and ``out``; a task adds its own model keys by subclassing :class:`ModelConfig` (see
``cvapps/tasks/*.py``; :func:`cvapps.tasks.load_config` picks the task's class). Unknown keys and wrong types are :class:`~cvapps.errors.ConfigError`
naming the key, e.g. ``config error: train.lr: should be a number, got 'abc'``.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from cvapps.errors import QUOTE_LIMIT, ConfigError, shorten

MAX_IMGSZ = 8192  # network input side; 8192**2 * 3 bytes is already 200 MB per image
MAX_YAML_DEPTH = 32  # nesting levels of a config (real configs use 4)
MAX_CONFIG_BYTES = 1 << 20  # real configs are a few kB
DEVICE_NAME = re.compile(r"^\s*(auto|cpu|mps|cuda(:\d+)?)\s*$", re.IGNORECASE)  # what resolve_device takes


class Section(BaseModel):
    # allow_inf_nan=False: `train.lr=.inf` or `.nan` would pass the bounds checks and wreck training.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic takes true/false as 1/0 for int and float fields; `train.epochs=true` is a mistake.
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _holds_bool(value) and _numeric(field.annotation) and not _admits_bool(field.annotation):
            raise ValueError("should be a number, not true/false")
        return value


def _holds_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(_holds_bool(v) for v in value))


def _numeric(annotation: Any) -> bool:
    return annotation in (int, float) or any(_numeric(a) for a in typing.get_args(annotation))


def _admits_bool(annotation: Any) -> bool:
    return annotation is bool or annotation is Any or any(_admits_bool(a) for a in typing.get_args(annotation))


class ModelConfig(Section):
    # Keys read only when a model is first built (initial weights). A saved model already holds
    # those weights, so loading one clears these keys and never reads them again (engine/load.py).
    BUILD_ONLY_KEYS: ClassVar[tuple[str, ...]] = ("pretrained", "backbone_weights", "weights")

    arch: str = Field(description="architecture of the task (e.g. classifier, fcn8s, faster_rcnn, yolo)")
    backbone: str = Field("tiny", description="name in the backbone registry (cvapps summary --backbones)")
    backbone_weights: str | None = Field(None, description="torchvision-format .pth state dict for the backbone")
    pretrained: bool = Field(False, description="torchvision ImageNet weights by name (needs network or hub cache)")
    weights: str | None = Field(None, description="a cvapps checkpoint whose weights start this model (fine-tuning)")
    freeze: int = Field(0, ge=-1, le=1000, description="freeze the first N backbone stages; -1 freezes the whole backbone")
    in_channels: int = Field(3, ge=1, le=4, description="1 for grayscale models such as the MNIST convnet")

    def without_build_only(self) -> "ModelConfig":
        """A copy with :attr:`BUILD_ONLY_KEYS` at their defaults, for rebuilding a saved model."""
        return self.model_copy(update={k: type(self).model_fields[k].default for k in self.BUILD_ONLY_KEYS})


class DataConfig(Section):
    root: str = Field(description="dataset root folder")
    imgsz: int = Field(224, ge=8, le=MAX_IMGSZ,
                       description="network input size (square); images are resized/letterboxed to it")
    names: list[str] | None = Field(None, description="class names; default: from the dataset")
    workers: int = Field(2, ge=0, le=256, description="DataLoader worker processes")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="held-out share when the dataset has no val split")
    tile: int | None = Field(None, ge=32, le=MAX_IMGSZ,
                             description="train on overlapping TILE x TILE tiles of images larger than it (detection); "
                                         "validation then predicts whole images in slices of this size")
    tile_overlap: float = Field(0.2, ge=0, le=0.9, description="fraction of a tile its neighbours share")


class TrainConfig(Section):
    epochs: int = Field(10, ge=1, le=100_000)
    batch: int = Field(16, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_steps: int = Field(0, ge=0, le=10**9, description="linear learning-rate warm-up steps")
    device: str = Field("auto", description="auto (cuda, else mps, else cpu), cpu, cuda, cuda:1, mps")
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    grad_clip: float | None = Field(10.0, gt=0, description="max gradient norm; null disables")
    resume: bool = Field(False, description="continue from OUT/last.pt")
    seed: int = Field(0, ge=0, lt=2**32)
    max_bad_steps: int = Field(5, ge=1, le=10**6, description="consecutive NaN/inf losses before training stops")
    val_every: int = Field(1, ge=1, le=100_000, description="evaluate every N epochs (and after the last)")
    log: list[Literal["csv", "tensorboard"]] = Field(
        default_factory=lambda: ["csv"],
        description="per-epoch metric loggers: csv (OUT/metrics.csv), tensorboard (event files in OUT/)")

    @field_validator("log", mode="before")
    @classmethod
    def _one_logger(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # train.log=tensorboard means [tensorboard]

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        # A misspelt device is a config error (exit 2) when the config is read, not a failure later on;
        # whether the named device exists here is checked when training starts (resolve_device).
        if not DEVICE_NAME.match(value):
            raise ValueError("unknown device; use auto, cpu, cuda, cuda:0, cuda:1, ... or mps")
        return value


# ±0.1 rad rotation, ±20% zoom and horizontal flips, as in the cats-vs-dogs course convnet.
DEFAULT_TRAIN_AUGMENT: list[dict[str, dict[str, Any]]] = [
    {"HorizontalFlip": {"p": 0.5}},
    {"Affine": {"rotate": [-5.73, 5.73], "scale": [0.8, 1.2], "p": 0.7}},
    {"ColorJitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.5}},
]


class AugmentConfig(Section):
    train: list[dict[str, dict[str, Any]]] = Field(
        default_factory=lambda: [dict(t) for t in DEFAULT_TRAIN_AUGMENT],
        description="albumentations transforms as [{Name: {param: value}}]; geometry to imgsz is appended",
    )


class TaskConfig(Section):
    task: str
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    out: str = Field("runs/exp", description="output folder for checkpoints, metrics and plots")


class _Refused(yaml.YAMLError):
    """A YAML construct configs may not use (anchors/aliases, absurd nesting)."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader without anchors and aliases and with a nesting limit.

    A few anchors of aliases expand to gigabytes (an "alias bomb"), so they are refused while
    composing, before anything expands; the depth limit turns absurd nesting into an error
    instead of a RecursionError.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused("YAML anchors and aliases (&name, *name) are not allowed in configs", event.start_mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" line {mark.line + 1}" if mark is not None else ""


def load_yaml_text(text: str, where: str) -> Any:
    """Parse config YAML (safe types only, no anchors/aliases, bounded depth); ConfigError when refused."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise ConfigError(f"config error: {where}{_where(exc)}: {exc.problem}") from None
    except RecursionError:
        raise ConfigError(f"config error: {where}: nested too deeply") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.01", "data.names=[a, b]"]`` -> nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"config error: override {shorten(item)} is not key=value (e.g. train.lr=0.01)")
        try:
            value = load_yaml_text(raw, f"override {shorten(key)}") if raw != "" else None
        except (yaml.YAMLError, ValueError):  # not YAML (or an int too long to parse): keep the text
            value = raw
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config error: override {shorten(item)} conflicts with another override")
        node[leaf] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping; every problem (missing, too big, not UTF-8, not YAML,
    anchors/aliases, nested too deep) is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: file not found: {path}")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config error: {path}: larger than {MAX_CONFIG_BYTES // 1024} kB; not a config")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config error: {path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config error: cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = load_yaml_text(text, str(path))
    except (yaml.YAMLError, ValueError) as exc:
        where = _where(exc) if isinstance(exc, yaml.YAMLError) else ""
        raise ConfigError(f"config error: {path}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config error: {path}: expected a mapping of keys at the top level")
    return data


def validate(config_class: type[TaskConfig], raw: dict[str, Any], source: str = "config") -> TaskConfig:
    """Build ``config_class`` from ``raw``; the first problem becomes a one-line ConfigError."""
    try:
        return config_class.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_class, source)) from None


def _describe(exc: ValidationError, config_class: type[BaseModel], source: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])[:QUOTE_LIMIT]
    if err["type"] == "extra_forbidden":
        known = _known_keys(config_class, err["loc"][:-1])
        hint = f" (known keys here: {', '.join(known)})" if known else ""
        return f"config error: {key}: unknown key{hint}"
    if err["type"] == "missing":
        return f"config error: {key}: required key is missing in {source}"
    msg = err["msg"].lower().removeprefix("value error, ")
    if err["type"] == "less_than_equal" and err["loc"] and err["loc"][-1] == "imgsz":
        msg += " (data.imgsz is the network input side in pixels)"
    return f"config error: {key}: {msg}, got {shorten(err.get('input'))}"


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)
