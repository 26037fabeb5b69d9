"""The one augmentation pipeline every task uses: image, mask and boxes move together.

:func:`build_augment` turns the config's ``augment.train`` list (albumentations transform names
and parameters) into an ``albumentations.Compose``; :class:`SamplePipeline` first fits each image to
the network input (:func:`~cvapps.data.letterbox.letterbox`), then applies those transforms in
training. Evaluation and prediction run the same fit without the random transforms. Normalisation
(mean/std) lives inside the models, so exported models and every predictor see the same input.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from cvapps.data.letterbox import PAD_VALUE, LetterboxMeta, letterbox
from cvapps.errors import ConfigError, shorten
from cvapps.formats.masks import IGNORE_INDEX  # noqa: F401  re-exported: the mask value losses and metrics skip

if TYPE_CHECKING:
    import albumentations as A

# Transforms that run user-supplied functions; a config is data and names no code.
REFUSED_TRANSFORMS = frozenset({"Lambda"})


def _plain(value: Any, depth: int = 0) -> bool:
    """True for config data: numbers, strings, bools, None, and lists/mappings of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if depth >= 4:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _takes_function(param: inspect.Parameter) -> bool:
    return "Callable" in str(param.annotation)


def build_augment(specs: list[dict[str, dict[str, Any]]], *, boxes: bool = False) -> A.Compose:
    """``[{"HorizontalFlip": {"p": 0.5}}, ...]`` -> Compose over image, mask and (xyxy) boxes.

    Geometric transforms fill new image pixels with the letterbox grey and new mask pixels with
    the ignore index, unless the spec sets ``fill``/``fill_mask`` itself. Boxes pushed out of the
    image (less than 30% visible) are dropped with their labels.
    """
    # Imported here, not at the top: only datasets need it, and prediction start-up would pay ~0.5 s.
    A = importlib.import_module("albumentations")  # noqa: N806 - albumentations' usual alias
    transforms = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(f"config error: augment.train[{i}]: expected one {{Name: {{params}}}} mapping")
        (name, params), = spec.items()
        cls = getattr(A, name, None) if isinstance(name, str) and not name.startswith("_") else None
        if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
            raise ConfigError(f"config error: augment.train[{i}]: unknown albumentations transform {shorten(name)}")
        if name in REFUSED_TRANSFORMS:
            raise ConfigError(f"config error: augment.train[{i}].{name}: transforms that run functions are not "
                              "allowed in configs")
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"config error: augment.train[{i}].{name}: parameters should be a mapping "
                              f"{{param: value}}, got {shorten(params)}")
        params = dict(params or {})
        accepted = inspect.signature(cls.__init__).parameters
        for key, value in params.items():
            if not _plain(value) or (key in accepted and _takes_function(accepted[key])):
                raise ConfigError(f"config error: augment.train[{i}].{name}.{str(key)[:40]}: expected plain data "
                                  f"(numbers, text, true/false, lists), got {shorten(value)}")
        # albumentations only warns about unknown arguments; a typo must not silently do nothing.
        unknown = [k for k in params if k not in accepted]
        if unknown and not any(a.kind is inspect.Parameter.VAR_KEYWORD for a in accepted.values()):
            raise ConfigError(f"config error: augment.train[{i}].{name}: unknown parameter {shorten(unknown[0])} "
                              f"(known: {', '.join(k for k in accepted if k != 'self')})")
        if "fill" in accepted:
            params.setdefault("fill", PAD_VALUE)
        if "fill_mask" in accepted:
            params.setdefault("fill_mask", IGNORE_INDEX)
        try:
            transforms.append(cls(**params))
        except Exception as exc:  # albumentations validates with pydantic and raises various types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"config error: augment.train[{i}].{name}: {first}") from None
    bbox_params = (A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3,
                                min_width=1, min_height=1, clip=True) if boxes else None)
    return A.Compose(transforms, bbox_params=bbox_params, seed=None)


class SamplePipeline:
    """Read-to-tensor path for one training/eval sample of any task.

    __call__(image_bgr, mask=None, boxes=None, labels=None) returns a dict with
      image: uint8 tensor (C, imgsz, imgsz) RGB (or gray),
      mask: int64 (imgsz, imgsz) class indices with 255 = ignore (if a mask was given),
      boxes: float32 (N, 4) xyxy in network-input pixels, labels: int64 (N,) (if boxes were given),
      meta: the LetterboxMeta that maps network pixels back to the original image.
    """

    def __init__(self, imgsz: int, resize_mode: str = "letterbox", in_channels: int = 3,
                 augment: A.Compose | None = None) -> None:
        self.imgsz, self.resize_mode, self.in_channels, self.augment = imgsz, resize_mode, in_channels, augment

    def __call__(self, image_bgr: np.ndarray, mask: np.ndarray | None = None,
                 boxes: np.ndarray | None = None, labels: np.ndarray | None = None) -> dict[str, Any]:
        image, meta = letterbox(image_bgr, self.imgsz, self.resize_mode, self.in_channels)
        out: dict[str, Any] = {"meta": meta}
        if mask is not None:
            mask = fit_mask(mask, meta)
        if boxes is not None:
            boxes = meta.boxes_to_input(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)).numpy()
            boxes = boxes.clip(0, self.imgsz)
            labels = np.asarray(labels if labels is not None else np.zeros(len(boxes)), dtype=np.int64)
            keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
            boxes, labels = boxes[keep], labels[keep]
        if self.augment is not None:
            kwargs: dict[str, Any] = {"image": image}
            if mask is not None:
                kwargs["mask"] = mask
            if boxes is not None:
                kwargs["bboxes"], kwargs["labels"] = boxes, labels
            res = self.augment(**kwargs)
            image, mask = res["image"], res.get("mask", mask)
            if boxes is not None:
                boxes = np.asarray(res["bboxes"], dtype=np.float32).reshape(-1, 4)
                labels = np.asarray(res["labels"], dtype=np.int64).reshape(-1)
        if image.ndim == 2:
            image = image[..., None]
        out["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if mask is not None:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
        if boxes is not None:
            out["boxes"] = torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4)
            out["labels"] = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).reshape(-1)
        return out


def fit_mask(mask: np.ndarray, meta: LetterboxMeta) -> np.ndarray:
    """Fit a class-index mask like its image: nearest-neighbour resize, pad with the ignore index."""
    (h, w), (px, py), (ih, iw) = meta.orig_hw, meta.pad_xy, meta.input_hw
    nw, nh = round(w * meta.scale_xy[0]), round(h * meta.scale_xy[1])
    resized = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST) if (nw, nh) != (w, h) else mask
    return cv2.copyMakeBorder(resized, py, ih - nh - py, px, iw - nw - px, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
