"""The one wall around ultralytics: every ultralytics name cvapps uses is reached through this module.

ultralytics' public API is ``from ultralytics import YOLO`` and that object's methods; cvapps also
builds on its internals, which change between minor releases. They are all listed in :data:`PARTS`
(and, for what is matched by class and attribute rather than imported, :data:`FOLDABLE_BLOCKS`):

* layers ``Conv`` / ``C2f`` of the PAN neck and the ``Detect`` head (necks/pan.py, heads/yolo.py: the
  cvapps YOLO is made of ultralytics' blocks), ``v8DetectionLoss`` (its loss: task-aligned assigner,
  CIoU + DFL box loss, BCE class loss) and ``non_max_suppression`` (its NMS, and native models');
* ``TorchNMS``: NMS without importing torchvision (nms.py);
* ``BYTETracker`` / ``BOTSORT``, ``KalmanFilterXYAH`` (the Kalman filter of cvapps' OC-SORT tracker) and ``YAML`` / ``IterableSimpleNamespace`` / ``check_yaml`` for their
  default settings (analytics/tracking.py);
* ``nn_tasks`` (``ultralytics.nn.tasks``): ``parse_model`` sizes a native model file's checked yaml on
  the meta device and the model classes rebuild it (tasks/ultralytics_rebuild.py: a model file never
  runs code); ``guess_model_task``;
* ``ops`` (``process_mask``, ``scale_masks``: native segmentation masks), ``coco80_to_coco91_class`` and
  the package's ``cfg/datasets/coco.yaml`` (COCO category ids), ``LOGGER`` (a quiet rebuild),
  ``SETTINGS`` (the weights folder), ``ONLINE`` and ``attempt_download_asset`` (published weights);
* Conv / DWConv's ``conv`` / ``bn`` / ``forward_fuse``: BatchNorm folding (:func:`fold_block`,
  called by engine/fuse.py) and activation fusing (:func:`runs_act_of_conv`, engine/packed_conv.py).

Supported: ultralytics :data:`SUPPORTED_TEXT` (the internals above checked on 8.4.x, tests/test_yolo.py,
tests/test_model_trust.py); any other installed version is a one-line error naming both at the first
use of a part (:func:`check_version`), and folding leaves ultralytics' blocks as they are.

Importing ultralytics takes 1-2 s that classification, segmentation and Faster R-CNN runs never pay,
so this module imports nothing of it itself: each part loads on its first use (module ``__getattr__``,
PEP 562), ``from cvapps.ultralytics_parts import Detect`` at once, ``ultralytics_parts.TorchNMS`` when
that line runs.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

from cvapps.errors import CvappsError

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ loads each name on first use
    import ultralytics as package
    from ultralytics import YOLO
    from ultralytics.data.converter import coco80_to_coco91_class
    from ultralytics.nn import tasks as nn_tasks
    from ultralytics.nn.modules import SPPF, C2f, Conv, Detect
    from ultralytics.nn.tasks import guess_model_task, parse_model
    from ultralytics.trackers import BOTSORT, BYTETracker
    from ultralytics.trackers.utils.kalman_filter import KalmanFilterXYAH
    from ultralytics.utils import (
        LOGGER,
        ONLINE,
        SETTINGS,
        YAML,
        IterableSimpleNamespace,
        ops,
    )
    from ultralytics.utils.checks import check_yaml
    from ultralytics.utils.downloads import attempt_download_asset
    from ultralytics.utils.loss import v8DetectionLoss
    from ultralytics.utils.nms import TorchNMS, non_max_suppression

SUPPORTED = ((8, 4), (8, 5))  # (major, minor): lowest supported, first unsupported
SUPPORTED_TEXT = ">=8.4,<8.5"

#: name here -> (ultralytics module, attribute of it; "" for the module itself)
PARTS: dict[str, tuple[str, str]] = {
    "YOLO": ("ultralytics", "YOLO"),  # the public API, here too so one module holds every import
    "package": ("ultralytics", ""),  # its data files (coco.yaml)
    "Conv": ("ultralytics.nn.modules", "Conv"),
    "C2f": ("ultralytics.nn.modules", "C2f"),
    "SPPF": ("ultralytics.nn.modules", "SPPF"),
    "Detect": ("ultralytics.nn.modules", "Detect"),
    "v8DetectionLoss": ("ultralytics.utils.loss", "v8DetectionLoss"),
    "non_max_suppression": ("ultralytics.utils.nms", "non_max_suppression"),
    "TorchNMS": ("ultralytics.utils.nms", "TorchNMS"),
    "BYTETracker": ("ultralytics.trackers", "BYTETracker"),
    "BOTSORT": ("ultralytics.trackers", "BOTSORT"),
    "KalmanFilterXYAH": ("ultralytics.trackers.utils.kalman_filter", "KalmanFilterXYAH"),
    "YAML": ("ultralytics.utils", "YAML"),
    "IterableSimpleNamespace": ("ultralytics.utils", "IterableSimpleNamespace"),
    "check_yaml": ("ultralytics.utils.checks", "check_yaml"),
    "nn_tasks": ("ultralytics.nn.tasks", ""),
    "parse_model": ("ultralytics.nn.tasks", "parse_model"),
    "guess_model_task": ("ultralytics.nn.tasks", "guess_model_task"),
    "ops": ("ultralytics.utils.ops", ""),
    "coco80_to_coco91_class": ("ultralytics.data.converter", "coco80_to_coco91_class"),
    "LOGGER": ("ultralytics.utils", "LOGGER"),
    "SETTINGS": ("ultralytics.utils", "SETTINGS"),
    "ONLINE": ("ultralytics.utils", "ONLINE"),
    "attempt_download_asset": ("ultralytics.utils.downloads", "attempt_download_asset"),
}

__all__ = ["BOTSORT", "FOLDABLE_BLOCKS", "LOGGER", "ONLINE", "PARTS", "SETTINGS", "SUPPORTED_TEXT", "YAML", "YOLO",
           "BYTETracker", "C2f", "KalmanFilterXYAH", "Conv", "SPPF", "Detect", "IterableSimpleNamespace", "TorchNMS", "attempt_download_asset",
           "check_version", "check_yaml", "coco80_to_coco91_class", "coco_class_names", "fold_block", "foldable_block",
           "guess_model_task", "installed_version", "nn_tasks", "non_max_suppression", "ops", "package", "parse_model",
           "runs_act_of_conv", "supported", "v8DetectionLoss"]


@functools.cache
def installed_version() -> str | None:
    """The installed ultralytics' version (package metadata: nothing is imported), None when absent."""
    try:
        return importlib.metadata.version("ultralytics")
    except importlib.metadata.PackageNotFoundError:
        return None


def supported(version: str | None) -> bool:
    """Whether ``version`` (``"8.4.190"``) is one whose internals cvapps uses as this module says."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return match is not None and SUPPORTED[0] <= (int(match[1]), int(match[2])) < SUPPORTED[1]


def check_version(version: str | None = None) -> str:
    """The installed (or given) ultralytics version; a one-line CvappsError when it is not supported."""
    version = installed_version() if version is None else version
    if not supported(version):
        raise CvappsError(f"cvapps uses ultralytics internals that need ultralytics {SUPPORTED_TEXT}, but "
                          f"{f'ultralytics {version} is' if version else 'ultralytics is not'} installed: "
                          f"pip install 'ultralytics{SUPPORTED_TEXT}'")
    return version or ""


def _load(name: str) -> Any:
    check_version()
    module_name, attr = PARTS[name]
    module = importlib.import_module(module_name)
    value = getattr(module, attr) if attr else module
    globals()[name] = value  # later uses find it without coming here
    return value


def __getattr__(name: str) -> Any:
    """A part of :data:`PARTS`, loaded (after the version check) on its first use."""
    if name not in PARTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _load(name)


def coco_class_names() -> list[str]:
    """COCO's 80 class names in ultralytics' order (its package's ``cfg/datasets/coco.yaml``)."""
    coco_yaml = Path(_load("package").__file__).parent / "cfg" / "datasets" / "coco.yaml"
    names = yaml.safe_load(coco_yaml.read_text(encoding="utf-8"))["names"]
    return [str(names[i]) for i in range(len(names))]


# --- BatchNorm folding of ultralytics' Conv blocks (engine/fuse.py, engine/packed_conv.py) --------------
#: ultralytics' blocks (exact classes: a subclass such as Conv2 adds a branch) whose forward is
#: ``act(bn(conv(x)))`` and ``forward_fuse`` is ``act(conv(x))``.
FOLDABLE_BLOCKS = ("Conv", "DWConv")
_fold_failed = False  # set at the first failure of forward_fuse: blocks run their own forward from then on


def _is_block(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ in FOLDABLE_BLOCKS and cls.__module__.startswith("ultralytics.")


def foldable_block(module: nn.Module) -> bool:
    """``module`` is an ultralytics Conv/DWConv that :func:`fold_block` may switch to ``forward_fuse``
    (the caller checks its ``conv`` / ``bn`` pair): not on an unsupported ultralytics, nor once
    ``forward_fuse`` has failed."""
    return (_is_block(module) and not _fold_failed and callable(getattr(module, "forward_fuse", None))
            and supported(installed_version()))


def fold_block(module: nn.Module, conv: nn.Conv2d) -> None:
    """Give a :func:`foldable_block` its folded convolution ``conv`` (its ``bn`` folded in) and run it
    as ``act(conv(x))``: ``bn`` becomes an Identity (so the block's own forward gives the same numbers)
    and the forward is ultralytics' ``forward_fuse``, as its ``DetectionModel.fuse`` does, guarded."""
    module.conv, module.bn = conv, nn.Identity()
    module.forward = _FusedForward(module)  # type: ignore[method-assign]


def runs_act_of_conv(module: nn.Module) -> bool:
    """``module`` is an ultralytics Conv/DWConv computing ``act(conv(x))``: folded by ultralytics
    (``forward_fuse``, ``bn`` deleted) or by :func:`fold_block`."""
    if not _is_block(module) or not supported(installed_version()):
        return False
    bn = getattr(module, "bn", None)
    if bn is None:
        return getattr(module.forward, "__func__", None) is getattr(type(module), "forward_fuse", ())
    return type(bn) is nn.Identity and isinstance(module.forward, _FusedForward)


class _FusedForward:
    """The forward of a block given to :func:`fold_block`: ``forward_fuse`` (skips the Identity left
    for the folded BatchNorm) until it fails once (an ultralytics that changed it); then, with one
    warning, every such block runs its own forward (``act(Identity(conv(x)))``: the same numbers)."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not _fold_failed:
            try:
                return self.block.forward_fuse(x)
            except Exception as exc:  # noqa: BLE001 - ultralytics-internal: any failure means the own forward
                out = type(self.block).forward(self.block, x)  # raises as well when the input is at fault
                _give_up(exc)
                return out
        return type(self.block).forward(self.block, x)


def _give_up(exc: Exception) -> None:
    """Stop using ``forward_fuse`` for the process, with one warning."""
    global _fold_failed
    if not _fold_failed:
        _fold_failed = True
        warnings.warn(f"ultralytics' Conv.forward_fuse failed ({type(exc).__name__}: {str(exc)[:120]}); "
                      "running the blocks' own forward instead", RuntimeWarning, stacklevel=4)
