"""Rebuild an ultralytics model from what an inert read of its ``.pt`` recorded.

The file's model object is never called or restored: its class name picks one of a closed set of
ultralytics model classes (:data:`MODEL_CLASSES`), its stored ``yaml`` (the architecture) is
checked against closed lists (:func:`validate_yaml`: ultralytics' ``parse_model`` ``eval``s the
``activation`` string and looks module names up in its module globals, which hold functions that
download and unpickle files), the layers it describes are sized on the meta device and compared
with the file's tensors, and only then is the model built for real by ultralytics from that yaml
and given the file's weights (strict). Before that, every class the file names must be one a plain
torch/ultralytics file names (:func:`check_names`). Names and training arguments are copied as plain data.
ultralytics' internals used here (``parse_model``, its model classes, ``LOGGER``) come from
:mod:`cvapps.ultralytics_parts`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import torch

from cvapps import ultralytics_parts
from cvapps.checkpoint import first_nonfinite
from cvapps.errors import CheckpointError, shorten
from cvapps.tasks.ultralytics_unpickle import (
    Stub,
    TensorRef,
    UnsafeFile,
    module_state,
    plain,
    stub_name,
)

#: Recorded model class -> (class in ultralytics.nn.tasks that rebuilds it, its task).
MODEL_CLASSES = {
    "ultralytics.nn.tasks.DetectionModel": ("DetectionModel", "detect"),
    "ultralytics.nn.tasks.YOLOv10DetectionModel": ("DetectionModel", "detect"),  # ultralytics' own alias
    "ultralytics.nn.tasks.SegmentationModel": ("SegmentationModel", "segment"),
    "ultralytics.nn.tasks.ClassificationModel": ("ClassificationModel", "classify"),
    "ultralytics.nn.tasks.PoseModel": ("PoseModel", "pose"),
    "ultralytics.nn.tasks.OBBModel": ("OBBModel", "obb"),
    "ultralytics.nn.tasks.RTDETRDetectionModel": ("RTDETRDetectionModel", "detect"),
    "ultralytics.nn.tasks.WorldModel": ("WorldModel", "detect"),
}
#: Plain tensor attributes (not parameters or buffers) a model class needs: name -> rank.
TENSOR_ATTRS = {"WorldModel": {"txt_feats": 3}}
#: Layer names a yaml may use. Each is an nn.Module class: ultralytics' layers as ``parse_model``
#: finds them in its module globals, torch's as ``nn.<Name>``. Not TorchVision (it downloads weights).
ULTRALYTICS_LAYERS = frozenset([
    "A2C2f", "AConv", "ADown", "AIFI", "Bottleneck", "BottleneckCSP", "C1", "C2", "C2PSA", "C2f",
    "C2fAttn", "C2fCIB", "C2fPSA", "C3", "C3Ghost", "C3TR", "C3k2", "C3x", "CBFuse", "CBLinear",
    "Classify", "Concat", "Conv", "ConvTranspose", "DWConv", "DWConvTranspose2d", "Detect", "ELAN1",
    "Focus", "GhostBottleneck", "GhostConv", "HGBlock", "HGStem", "ImagePoolingAttn", "Index", "OBB",
    "OBB26", "PSA", "Pose", "Pose26", "RTDETRDecoder", "RepC3", "RepNCSPELAN4", "ResNetLayer", "SCDown",
    "SPP", "SPPELAN", "SPPF", "Segment", "Segment26", "WorldDetect", "v10Detect"])
TORCH_LAYERS = frozenset([
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm2d", "Conv2d", "ConvTranspose2d", "Dropout", "Identity",
    "MaxPool2d", "Upsample", "ZeroPad2d"])
#: The strings a layer argument may be: parse_model resolves "nc"/"kpt_shape" to the yaml's values,
#: literal_evals "None", and passes upsample modes through.
STRING_ARGS = frozenset({"nc", "kpt_shape", "None", "nearest", "bilinear", "bicubic"})
ACTIVATION = re.compile(r"^(torch\.)?nn\.(SiLU|ReLU|ReLU6|LeakyReLU|GELU|Hardswish|Mish|Tanh|Sigmoid|ELU|Identity)"
                        r"\((\d{1,3}(\.\d{1,6})?)?\)$")
SCALE = re.compile(r"^[a-z]?$")
TEXT_MODEL = re.compile(r"^[\w:./-]{1,64}$")
#: The classes and functions a plain torch/ultralytics model file names (layers and models, loss
#: helpers of a trained model, its training arguments, numpy scalars in metrics, paths, the
#: ``getattr`` published files use for bound methods, torchvision transforms of classifiers).
#: Nothing is called either way; any other name means the file was made to do something else.
KNOWN_NAMES = re.compile(
    r"^(torch\.nn\.modules\.\w+\.[A-Z]\w*|ultralytics\.nn\.modules\.[\w.]+|ultralytics\.nn\.tasks\.[A-Z]\w*"
    r"|ultralytics\.utils\.(loss|tal)\.\w+|ultralytics(\.yolo)?\.utils\.IterableSimpleNamespace|types\.SimpleNamespace"
    r"|numpy(\._core|\.core)?\.multiarray\.scalar|numpy\.dtype|numpy\.dtypes\.\w+|pathlib(\._local)?\.\w*Path"
    r"|torchvision\.transforms\.[\w.]+|builtins\.getattr)$")
#: Of those, the classes that are layers or models: a file never calls them, it NEWOBJs them bare.
MODULE_NAMES = re.compile(r"^(torch\.nn\.modules\.|ultralytics\.nn\.)")
MAX_LAYERS, MAX_REPEATS, MAX_BLOCKS, MAX_ARG = 256, 64, 1000, 1_000_000  # shipped: <= 60, 18, ~150


def check_names(root: Any) -> None:
    """UnsafeFile unless every placeholder under ``root`` names a :data:`KNOWN_NAMES` class, and
    layers and models were made without arguments (``REDUCE(DetectionModel, (cfg,))`` is how a
    pickle would build a model from its own yaml)."""
    stack, seen = [root], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (bool, int, float, str, bytes, TensorRef)):
            continue
        seen.add(id(obj))
        if len(seen) > 5_000_000:
            raise UnsafeFile("its pickle holds too many objects")
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, type) and issubclass(obj, Stub):
            _check_name(obj.cv_name, False)
        elif isinstance(obj, Stub):
            _check_name(obj.cv_name, bool(obj.cv_args or obj.cv_kwargs))
            stack.extend((obj.cv_args, obj.cv_kwargs, obj.cv_state))


def _check_name(name: str, called: bool) -> None:
    if not KNOWN_NAMES.match(name):
        raise UnsafeFile(f"it names {name[:80]}, which no plain model file does")
    if called and MODULE_NAMES.match(name):
        raise UnsafeFile(f"it calls {name[:80]} with arguments, as no plain file does")


def _number(x: Any, lo: float = -MAX_ARG, hi: float = MAX_ARG) -> bool:
    return type(x) in (int, float) and math.isfinite(x) and lo <= x <= hi


def _int(x: Any, lo: int, hi: int) -> bool:
    return type(x) is int and lo <= x <= hi


def validate_yaml(spec: Any) -> dict[str, Any]:
    """``spec`` (plain data) if it is a model yaml cvapps will build, else UnsafeFile naming the first
    thing outside the closed lists."""
    if not isinstance(spec, dict) or not all(isinstance(k, str) for k in spec):
        raise UnsafeFile("its yaml is not a mapping")
    checks = {
        "nc": lambda v: _int(v, 1, 100_000), "channels": lambda v: _int(v, 1, 16), "ch": lambda v: _int(v, 1, 16),
        "reg_max": lambda v: _int(v, 1, 64), "end2end": lambda v: type(v) is bool,
        "inplace": lambda v: type(v) is bool,
        "depth_multiple": lambda v: _number(v, 1e-3, 4), "width_multiple": lambda v: _number(v, 1e-3, 4),
        "kpt_shape": lambda v: isinstance(v, list) and len(v) == 2 and _int(v[0], 1, 1000) and v[1] in (2, 3),
        "activation": lambda v: isinstance(v, str) and ACTIVATION.match(v) is not None,
        "scale": lambda v: isinstance(v, str) and SCALE.match(v) is not None and (not v or v in spec.get("scales", {})),
        "scales": lambda v: isinstance(v, dict) and len(v) <= 8 and all(
            isinstance(k, str) and len(k) == 1 and SCALE.match(k) and isinstance(s, list) and len(s) == 3
            and _number(s[0], 1e-3, 4) and _number(s[1], 1e-3, 4) and _number(s[2], 1, 16384) for k, s in v.items()),
        "yaml_file": lambda v: isinstance(v, str) and len(v) <= 512,  # only a label: never read
        "text_model": lambda v: isinstance(v, str) and TEXT_MODEL.match(v) is not None,
        "backbone": lambda v: isinstance(v, list), "head": lambda v: isinstance(v, list),
    }
    for key, value in spec.items():
        if key not in checks:
            raise UnsafeFile(f"its yaml has a key {shorten(key, 40)} no ultralytics model has")
        if not checks[key](value):
            raise UnsafeFile(f"its yaml's {key} {shorten(value, 40)} is outside what cvapps accepts")
    if "nc" not in spec or not isinstance(spec.get("backbone"), list) or not isinstance(spec.get("head"), list):
        raise UnsafeFile("its yaml lacks nc, backbone or head")
    rows = spec["backbone"] + spec["head"]
    if not 1 <= len(rows) <= MAX_LAYERS:
        raise UnsafeFile(f"its yaml has {len(rows)} layers")
    for i, row in enumerate(rows):
        _check_row(i, row)
    # parse_model repeats a block round(n * depth) times: bound the blocks even the meta-device sizing builds.
    depth = spec["scales"][spec["scale"]][0] if spec.get("scales") and spec.get("scale") else \
        next(iter(spec["scales"].values()))[0] if spec.get("scales") else spec.get("depth_multiple", 1.0)
    blocks = sum(max(round(row[1] * depth), 1) if row[1] > 1 else row[1] for row in rows)
    if blocks > MAX_BLOCKS:
        raise UnsafeFile(f"its yaml repeats {blocks} blocks (at most {MAX_BLOCKS})")
    return spec


def _check_row(i: int, row: Any) -> None:
    if not isinstance(row, list) or len(row) != 4:
        raise UnsafeFile(f"its yaml's layer {i} is not [from, repeats, module, args]")
    src, n, module, args = row
    sources = src if isinstance(src, list) else [src]
    if not 1 <= len(sources) <= 16 or not all(_int(s, -(i + 1), i - 1) for s in sources):
        raise UnsafeFile(f"its yaml's layer {i} takes input from a layer that does not exist")
    if not _int(n, 1, MAX_REPEATS):
        raise UnsafeFile(f"its yaml's layer {i} repeats outside 1..{MAX_REPEATS}")
    if not isinstance(module, str) or not (module in ULTRALYTICS_LAYERS
                                           or (module.startswith("nn.") and module[3:] in TORCH_LAYERS)):
        raise UnsafeFile(f"its yaml's layer {i} module {shorten(module, 40)} is not an ultralytics or torch layer")
    if not isinstance(args, list) or len(args) > 16 or not all(_arg(a) for a in args):
        raise UnsafeFile(f"its yaml's layer {i} ({module}) has an argument that is not a number or a known word")


def _arg(a: Any) -> bool:
    if a is None or type(a) is bool or _number(a):
        return True
    if isinstance(a, str):
        return a in STRING_ARGS
    return isinstance(a, list) and len(a) <= 16 and all(x is None or _number(x) for x in a)


@contextlib.contextmanager
def _quiet_ultralytics() -> Iterator[None]:
    """ultralytics logs a layer table and summary while building; a load should say nothing."""
    logger = ultralytics_parts.LOGGER
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _meta_shapes(spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the layers ``spec`` describes, built on the meta device
    (no memory): the real build happens only once they match the file's tensors."""
    with torch.device("meta"):
        layers, _ = ultralytics_parts.parse_model(copy.deepcopy(spec), ch=spec.get("channels", 3), verbose=False)
    return {f"model.{k}": tuple(v.shape) for k, v in layers.state_dict().items()}


def _compare(expected: dict[str, tuple[int, ...]], weights: dict[str, torch.Tensor]) -> None:
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [k for k in expected if k in weights and tuple(weights[k].shape) != expected[k]]
    for what, keys in (("lacks", missing), ("has unexpected", unexpected), ("has wrongly shaped", shapes)):
        if keys:
            more = f" (+{len(keys) - 2} more)" if len(keys) > 2 else ""
            raise UnsafeFile(f"its weights do not fit the layers its yaml describes: it {what} {keys[:2]}{more}")


def rebuild_checkpoint(path: str, root: Any) -> tuple[dict[str, Any], str]:
    """(checkpoint dict with a real ``model``, its task) from an inert read of an ultralytics file.

    ``model`` is the EMA model when the file has one (as ultralytics loads it), float32, eval
    mode. UnsafeFile for anything outside what plain ultralytics files hold; CheckpointError naming
    ``path`` and the first bad weight when a weight is NaN or infinite."""
    if not isinstance(root, dict):
        raise UnsafeFile(f"its pickle holds a {stub_name(root)[:80]}, not a checkpoint dict")
    check_names(root)
    stub = root.get("ema") if isinstance(root.get("ema"), Stub) else root.get("model")
    if not isinstance(stub, Stub):
        raise UnsafeFile(f"its 'model' entry is a {stub_name(stub)[:80]}, not a model object")
    if stub.cv_name not in MODEL_CLASSES:
        raise UnsafeFile(f"its model is a {stub.cv_name[:80]}, not one of the ultralytics model classes cvapps "
                         "rebuilds")
    weights = module_state(stub)  # also: made without arguments, its state a dict
    state = stub.cv_state
    # Everything that can be refused is checked before anything is built.
    ckpt = {k: plain(v) for k, v in root.items() if isinstance(k, str) and k not in ("model", "ema", "optimizer")}
    spec = validate_yaml(plain(state.get("yaml")))
    names, args = _names(plain(state.get("names")), spec["nc"]), plain(state.get("args"))
    _compare(_meta_shapes(spec), weights)
    bad = first_nonfinite(weights)
    if bad is not None:
        raise CheckpointError(f"{path}: damaged model file: weight {bad} holds NaN or infinite values")
    attr, task = MODEL_CLASSES[stub.cv_name]
    with _quiet_ultralytics():
        net = getattr(ultralytics_parts.nn_tasks, attr)(cfg=copy.deepcopy(spec), ch=spec.get("channels", 3),
                                                         verbose=False)
    net.load_state_dict(weights, strict=True)
    for name, rank in TENSOR_ATTRS.get(attr, {}).items():
        value = state.get(name)
        if isinstance(value, TensorRef) and value.tensor.dim() == rank and value.tensor.is_floating_point():
            setattr(net, name, value.tensor.float().clone())
    if names is not None:
        net.names = names
    net.args = {**(args if isinstance(args, dict) else {}), "task": task}
    net.task = task
    ckpt["model"] = net.float().eval()
    return ckpt, task


def _names(value: Any, nc: int) -> dict[int, str] | None:
    """Class names as ultralytics keeps them ({index: name}); None when the file has none usable."""
    if isinstance(value, list):
        value = dict(enumerate(value))
    if not isinstance(value, dict) or len(value) != nc:
        return None
    try:
        names = {int(k): v for k, v in value.items()}
    except (TypeError, ValueError):
        return None
    if sorted(names) != list(range(nc)) or not all(isinstance(v, str) and len(v) <= 256 for v in names.values()):
        return None
    return names
