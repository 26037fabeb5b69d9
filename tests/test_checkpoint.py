"""Checkpoints: plain dicts that load with weights_only=True, written atomically."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from cvapps.checkpoint import load_checkpoint, save_checkpoint
from cvapps.tasks import load_config
from cvapps.engine.load import load_model
from cvapps.errors import CheckpointError
from cvapps.tasks import get_task

REPO = Path(__file__).resolve().parents[1]


def _ckpt(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    cfg = load_config(REPO / "configs/classify_shapes.yaml")
    names = ["circle", "square", "triangle"]
    model = get_task("classify").build_model(cfg, names)
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"task": "classify", "config": cfg.model_dump(mode="json"), "class_names": names,
                           "preprocessing": {"imgsz": 64, "resize": "stretch", "in_channels": 3},
                           "model": model.state_dict()})
    return path, model


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    path, model = _ckpt(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert raw["task"] == "classify" and raw["class_names"] == ["circle", "square", "triangle"]
    predictor = load_model(path, tasks="classify", device="cpu").predictor()
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(predictor.model(x), model(x))
    assert not list(tmp_path.glob(".*tmp")), "no temporary files left behind"


def test_wrong_task_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    path, _ = _ckpt(tmp_path)
    with pytest.raises(CheckpointError, match="is a 'classify' checkpoint; this command needs 'segment'"):
        load_checkpoint(path, "segment")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": argparse.Namespace(a=1)}, foreign)  # needs full unpickling
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(foreign)
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a cvapps checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
