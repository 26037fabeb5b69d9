"""The task contract, checked for every task in the registry (tiny backbone, 64 px images).

Every task builds, trains one step (native ultralytics models train with ultralytics' own trainer,
tested in test_yolo.py), predicts through the one predictor, postprocesses to its structure type,
round-trips a checkpoint through the one loader, and, where exportable, exports ONNX and runs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_checkpoints import ROOT

from cvapps.checkpoint import save_checkpoint
from cvapps.engine.device import images_to_device
from cvapps.engine.load import load_model
from cvapps.engine.train import build_optimizer, make_loader
from cvapps.tasks import TASK_MODULES, get_task, load_config

SETUP = {  # task -> (config, data root under the shapes folder, overrides, the prediction's parts)
    "classify": ("classify_shapes.yaml", "classify", ["data.imgsz=32"], ("classification",)),
    "segment": ("segment_shapes.yaml", "", ["data.imgsz=64"], ("semantic",)),
    "faster_rcnn": ("faster_rcnn_shapes.yaml", "", ["data.imgsz=64", "model.fpn_channels=16", "model.roi_head_width=32",
                                                     "model.rpn_pre_nms_top_n_test=50", "model.rpn_post_nms_top_n_test=20"],
                    ("detections",)),
    "yolo": ("yolo_shapes.yaml", "", ["data.imgsz=64"], ("detections",)),
    "ultralytics": ("ultralytics_shapes.yaml", "", ["data.imgsz=64", "model.model=yolov8n.yaml"], ("detections",)),
    "multitask": ("multitask_shapes.yaml", "", ["data.imgsz=64"], ("detections", "semantic", "presence")),
}
EXPORTABLE = ("classify", "segment", "yolo", "multitask")


def test_every_registered_task_is_covered() -> None:
    assert set(SETUP) == set(TASK_MODULES)


@pytest.mark.parametrize("name", sorted(TASK_MODULES))
def test_task_contract(name: str, small_shapes: Path, tmp_path: Path) -> None:
    config, sub, overrides, structure = SETUP[name]
    cfg = load_config(ROOT / "configs" / config, [f"data.root={small_shapes / sub}", "data.workers=0",
                                                   "train.batch=2", "train.device=cpu", *overrides])
    task = get_task(name)
    torch.manual_seed(0)
    device = torch.device("cpu")

    # builds (and its datasets), trains one step
    if task.trains_externally:
        model = task.build_model(cfg, [])  # the model file says its classes (yolov8n.yaml: "0".."79")
        class_names = [str(i) for i in range(80)]
    else:
        splits = task.build_datasets(cfg)
        class_names = splits.class_names
        model = task.build_model(cfg, class_names)
        images, targets = next(iter(make_loader(task, splits.train, cfg, shuffle=True, device=device)))
        model.train()
        losses = model(images_to_device(images, device), task.targets_to(targets, device))
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(model, cfg.train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        after = [p for p in model.parameters() if p.requires_grad]
        assert any(not torch.equal(a, b) for a, b in zip(after, before)), "one step changed the weights"

    # checkpoint round trip through the one loader
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    model.eval()
    if name == "ultralytics":
        path = tmp_path / "native.pt"
        torch.save({"model": model.net}, path)  # ultralytics' checkpoint layout
        loaded = load_model(path, device="cpu", imgsz=64)
    else:
        path = tmp_path / "model.pt"
        save_checkpoint(path, {"task": name, "config": cfg.model_dump(mode="json"), "class_names": class_names,
                               "preprocessing": task.preprocessing(cfg), "model": model.state_dict()})
        loaded = load_model(path, device="cpu")
        for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values()):
            assert torch.equal(a, b)
    assert loaded.task.name == name and loaded.class_names == class_names

    # predicts and postprocesses to the task's structure, in original pixels
    options = {"conf": 0.0} if "detections" in structure else {}
    prediction = loaded.predictor()(image, **options)
    assert tuple(prediction.parts()) == structure
    if "semantic" in structure:
        assert prediction.semantic.mask.shape == image.shape[:2]
    det = prediction.detections
    if det is not None and len(det):
        assert float(det.boxes[:, [0, 2]].max()) <= 70 and float(det.boxes[:, [1, 3]].max()) <= 50

    # exports ONNX and runs it through the same predictor
    if name in EXPORTABLE:
        pytest.importorskip("onnxruntime")
        from cvapps.export import export_onnx

        report = export_onnx(path)
        onnx_prediction = load_model(report.path, device="cpu").predictor()(image, **options)
        assert tuple(onnx_prediction.parts()) == structure
        if "classification" in structure:
            want = load_model(path, device="cpu").predictor()(image).classification.label
            assert onnx_prediction.classification.label == want
