"""One augmentation pipeline: image, mask and boxes move together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvapps.config import DEFAULT_TRAIN_AUGMENT
from cvapps.data.augment import IGNORE_INDEX, SamplePipeline, build_augment
from cvapps.data.letterbox import letterbox
from cvapps.errors import ConfigError


def _scene(h: int = 60, w: int = 100):
    image = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    image[10:30, 5:25] = 255
    mask[10:30, 5:25] = 2
    return image, mask, np.array([[5, 10, 25, 30]], np.float32)


def test_horizontal_flip_mirrors_box_and_mask() -> None:
    image, mask, boxes = _scene()
    pipe = SamplePipeline(100, augment=build_augment([{"HorizontalFlip": {"p": 1.0}}], boxes=True))
    out = pipe(image, mask=mask, boxes=boxes, labels=np.array([2]))
    # Letterbox pads 20 rows top and bottom (60 -> 100); the flip mirrors x: 5..25 -> 75..95.
    assert torch.allclose(out["boxes"], torch.tensor([[75.0, 30.0, 95.0, 50.0]]), atol=1e-4)
    assert out["labels"].tolist() == [2]
    m = out["mask"]
    assert (m[30:50, 75:95] == 2).all() and (m == 2).sum() == 400
    assert (m[:20] == IGNORE_INDEX).all(), "letterbox padding is ignored in masks"
    assert out["image"][:, 30:50, 75:95].float().mean() == 255


@pytest.mark.parametrize("seed", range(5))
def test_default_pipeline_keeps_mask_and_boxes_consistent(seed: int) -> None:
    np.random.seed(seed)
    image, mask, boxes = _scene(80, 80)
    aug = build_augment(DEFAULT_TRAIN_AUGMENT, boxes=True)
    aug.set_random_seed(seed)
    out = SamplePipeline(80, augment=aug)(image, mask=mask, boxes=boxes, labels=np.array([1]))
    ys, xs = torch.nonzero(out["mask"] == 2, as_tuple=True)
    if len(out["boxes"]):
        x0, y0, x1, y1 = out["boxes"][0].tolist()
        # The moved box encloses the moved mask (within a pixel of resampling).
        assert xs.min() >= x0 - 1.5 and xs.max() <= x1 + 1.5
        assert ys.min() >= y0 - 1.5 and ys.max() <= y1 + 1.5


def test_box_pushed_out_is_dropped() -> None:
    image, _, _ = _scene(100, 100)
    aug = build_augment([{"Affine": {"translate_px": {"x": 95, "y": 0}, "p": 1.0}}], boxes=True)
    out = SamplePipeline(100, augment=aug)(image, boxes=np.array([[80, 10, 99, 30]]), labels=np.array([1]))
    assert len(out["boxes"]) == 0 and len(out["labels"]) == 0


def test_letterbox_round_trip_non_square() -> None:
    image = np.zeros((250, 333, 3), np.uint8)
    _, meta = letterbox(image, 128)
    boxes = torch.tensor([[10.0, 20.0, 300.0, 240.0], [0.0, 0.0, 333.0, 250.0]])
    back = meta.boxes_to_original(meta.boxes_to_input(boxes))
    assert torch.allclose(back, boxes, atol=1e-3)


def test_unknown_transform_and_bad_params_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"augment.train\[0\]: unknown albumentations transform 'Fliip'"):
        build_augment([{"Fliip": {}}])
    with pytest.raises(ConfigError, match=r"augment.train\[0\].HorizontalFlip"):
        build_augment([{"HorizontalFlip": {"nonsense": 1}}])


@pytest.mark.parametrize("spec, message", [
    ({"Lambda": {"image": "os.system"}}, "Lambda: transforms that run functions are not allowed"),
    ({"HorizontalFlip": {"p": print}}, "HorizontalFlip.p: expected plain data"),
    ({"FDA": {"reference_images": ["a.jpg"], "read_fn": "os.system"}}, "FDA.read_fn: expected plain data"),
    ({"HorizontalFlip": [0.5]}, "HorizontalFlip: parameters should be a mapping"),
    ({"__class__": {}}, "unknown albumentations transform '__class__'"),
])
def test_augment_takes_plain_data_only(spec: dict, message: str) -> None:
    # A config names transforms and data; nothing in it may become a function call.
    with pytest.raises(ConfigError) as info:
        build_augment([spec])
    assert message in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 200
