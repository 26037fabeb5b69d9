"""The one model loader (cvapps.engine.load): build-only keys, checkpoint faults, safe ultralytics files."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tiny_checkpoints import ROOT, SHAPES, make_checkpoint

from cvapps.cli import main
from cvapps.engine.load import load_model
from cvapps.errors import CheckpointError
from cvapps.structures import Detections


class Evil:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_file(path: Path, marker: Path) -> Path:
    torch.save({"note": "ultralytics", "train_args": {"model": "ultralytics/yolov8n"}, "model": Evil(marker)}, path)
    assert b"ultralytics" in path.read_bytes() and not marker.exists()
    return path


def _images(folder: Path, sizes=((48, 64), (64, 40))) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f"im{i}.png"), (rng.random((h, w, 3)) * 255).astype(np.uint8))
    return folder


def test_faster_rcnn_checkpoint_loads_after_its_detector_weights_file_is_gone(tmp_path: Path) -> None:
    """Issue 10: model.detector_weights is read when the model is first built, never at load."""
    from cvapps.checkpoint import save_checkpoint
    from cvapps.tasks import get_task, load_config

    base = ["data.root=unused", "data.imgsz=64", "model.fpn_channels=16", "model.roi_head_width=32",
            "model.rpn_pre_nms_top_n_test=50", "model.rpn_post_nms_top_n_test=20"]
    task = get_task("faster_rcnn")
    donor = task.build_model(load_config(ROOT / "configs" / "faster_rcnn_shapes.yaml", base), SHAPES)
    weights = tmp_path / "detector.pth"
    torch.save(donor.state_dict(), weights)  # the layout a torchvision-format detector file has
    cfg = load_config(ROOT / "configs" / "faster_rcnn_shapes.yaml", [*base, f"model.detector_weights={weights}"])
    model = task.build_model(cfg, SHAPES)  # reads the file
    assert torch.equal(model.state_dict()["rpn.head.conv.0.0.weight"], donor.state_dict()["rpn.head.conv.0.0.weight"])
    ckpt = tmp_path / "frcnn.pt"
    save_checkpoint(ckpt, {"task": "faster_rcnn", "config": cfg.model_dump(mode="json"), "class_names": SHAPES,
                           "preprocessing": task.preprocessing(cfg), "model": model.state_dict()})
    weights.unlink()
    loaded = load_model(ckpt, device="cpu")
    assert loaded.config.model.detector_weights is None
    image = np.full((50, 70, 3), 120, np.uint8)
    det = loaded.predictor()(image, conf=0.0).detections
    assert isinstance(det, Detections)
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 64)
        model.eval()
        ref = model(x)[0]["boxes"]
        got = loaded.model(x)[0]["boxes"]
    assert torch.equal(ref, got), "the loaded model is the saved one (same norm layers and weights)"


def test_checkpoint_that_does_not_fit_its_model_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    """Issue 17: loads with weights_only but lacks keys / has other shapes -> one line naming keys."""
    ckpt = make_checkpoint(tmp_path / "c.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    raw = torch.load(ckpt, weights_only=True)
    state = raw["model"]
    first = next(iter(state))
    del state[first]
    last = list(state)[-1]
    state[last] = torch.zeros(7, 7)
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "bad.pt")
    msg = str(info.value)
    assert "\n" not in msg and first in msg and last in msg and "missing" in msg and "shape mismatch" in msg
    _images(tmp_path / "imgs")
    assert main(["classify", str(tmp_path / "imgs"), "--model", str(tmp_path / "bad.pt"), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and first in err


def test_malicious_pickle_is_refused_everywhere_and_runs_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    """Issue 17 (severe): no code runs from a model file without --trust-model."""
    monkeypatch.delenv("CVAPPS_TRUST_MODEL", raising=False)
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "evil.pt", marker)
    images = _images(tmp_path / "imgs")
    for argv in (["detect", str(images), "--model", str(evil)],
                 ["classify", str(images), "--model", str(evil)],
                 ["val", str(evil), f"data.root={tmp_path}"]):
        code = main([*argv, "--out", str(tmp_path / "out"), "--quiet"] if argv[0] != "val"
                    else [*argv, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 1 and not marker.exists(), argv
        assert len(err.splitlines()) == 1 and "--trust-model" in err and "CVAPPS_TRUST_MODEL=1" in err, err
    # task: ultralytics with model.model=evil.pt: refused before any training work
    from cvapps.engine.train import train
    from cvapps.tasks import load_config

    cfg = load_config(ROOT / "configs" / "ultralytics_shapes.yaml",
                      [f"data.root={tmp_path / 'no_data'}", f"model.model={evil}", f"out={tmp_path / 'run'}",
                       "train.device=cpu"])
    with pytest.raises(CheckpointError, match="--trust-model"):
        train(cfg, progress=False, log=lambda m: None)
    assert not marker.exists()
    # the trust switch is what it says: the file is unpickled (and its code runs)
    monkeypatch.setenv("CVAPPS_TRUST_MODEL", "1")
    with pytest.raises(CheckpointError):
        load_model(evil)
    assert marker.exists()


def test_real_ultralytics_checkpoint_loads_without_trust_and_predicts(tmp_path: Path, monkeypatch) -> None:
    """A file saved by ultralytics' own code from yolov8n.yaml loads with weights_only and predicts."""
    from ultralytics import YOLO

    monkeypatch.delenv("CVAPPS_TRUST_MODEL", raising=False)
    path = tmp_path / "yolov8n_saved.pt"
    YOLO("yolov8n.yaml").save(path)
    loaded = load_model(path, device="cpu", imgsz=64)
    assert loaded.task.name == "ultralytics" and len(loaded.class_names) == 80
    det = loaded.predictor()(np.full((40, 90, 3), 100, np.uint8), conf=0.0, max_det=5).detections
    assert isinstance(det, Detections) and len(det) == 5
    assert float(det.boxes[:, 2].max()) <= 90 and float(det.boxes[:, 3].max()) <= 40
    images = _images(tmp_path / "imgs")
    assert main(["detect", str(images), "--model", str(path), "--out", str(tmp_path / "o"), "--conf", "0",
                 "--device", "cpu", "--quiet", "--save-json"]) == 0
    assert (tmp_path / "o" / "predictions.json").is_file()


def test_pipelines_and_benchmarks_do_not_import_the_cli() -> None:
    for folder in ("pipelines", "benchmarks"):
        for py in (ROOT / folder).glob("*.py"):
            text = py.read_text()
            assert "cvapps.cli import load" not in text and "from cvapps.cli.detect" not in text, py
            assert "cvapps.cli.predict" not in text, py


@pytest.mark.parametrize("module", ["cvapps.config", "cvapps.backbones.registry"])
def test_lower_modules_import_nothing_above_them(module: str) -> None:
    import subprocess
    import sys

    code = (f"import sys, {module}; bad = [m for m in sys.modules if m.startswith(('cvapps.tasks', 'cvapps.engine', "
            f"'cvapps.cli'))]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert res.returncode == 0, res.stdout + res.stderr
