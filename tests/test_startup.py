"""Start-up: what a one-image prediction imports, the lazy backbone registry, and the NMS that keeps
torchvision off a YOLO run's start-up (timings themselves: benchmarks/startup.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvapps.backbones import BACKBONE_MODULES, BACKBONES, available_backbones
from cvapps.nms import TORCH_NMS_MAX_BOXES, class_wise_nms, torch_nms

ROOT = Path(__file__).resolve().parents[1]

ONE_IMAGE = """
import glob, sys
import cvapps
model = cvapps.load("sample_data/models/detect.pt", device="cpu")
image = sorted(glob.glob("sample_data/shapes/images/val/*.jpg"))[0]
results = list(model.predict(image))
assert len(results) == 1 and len(results[0].prediction.detections.boxes) > 0
print(" ".join(m for m in ("torchvision", "matplotlib", "albumentations") if m in sys.modules))
"""


def test_one_image_yolo_prediction_imports_no_heavy_extra_library():
    """torchvision (~1.2-1.9 s), matplotlib and albumentations are for other paths (Faster R-CNN,
    training plots, datasets); a one-image YOLO prediction must not pay for them."""
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", ONE_IMAGE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


def test_backbone_table_names_the_module_that_registers_each_backbone():
    for module in sorted(set(BACKBONE_MODULES.values())):
        before = set(BACKBONES)
        importlib.import_module(module)
        for name in set(BACKBONES) - before:
            assert BACKBONE_MODULES.get(name) == module
    assert set(BACKBONES) == set(BACKBONE_MODULES)
    assert available_backbones() == sorted(BACKBONE_MODULES)


@pytest.mark.parametrize("seed", range(4))
def test_torch_nms_keeps_exactly_what_torchvision_keeps(seed):
    from torchvision.ops import batched_nms

    g = torch.Generator().manual_seed(seed)
    n = 200
    xy = torch.rand(n, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 2], 1)
    scores = torch.rand(n, generator=g).round(decimals=2)  # ties included
    labels = torch.randint(0, 4, (n,), generator=g)
    for iou in (0.3, 0.5, 0.7):
        assert torch.equal(torch_nms(boxes, scores, labels, iou), batched_nms(boxes, scores, labels, iou))
    assert torch.equal(class_wise_nms(boxes, scores, labels, 0.5), batched_nms(boxes, scores, labels, 0.5))


def test_nms_of_nothing_and_of_many_boxes():
    empty = torch.zeros(0, 4)
    assert torch_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0
    n = TORCH_NMS_MAX_BOXES + 1  # the torchvision branch
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(n, 1)
    kept = class_wise_nms(boxes, torch.linspace(1, 0, n), torch.zeros(n, dtype=torch.long), 0.5)
    assert kept.tolist() == [0]
