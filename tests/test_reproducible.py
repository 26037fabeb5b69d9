"""Reproducible training: the same config and train.seed give identical metrics.csv on the CPU, for
every task that trains with cvapps' loop, with the config's own (random) augmentation on."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cvapps.data.synth import SynthSpec, generate_shapes
from cvapps.engine.train import train
from cvapps.tasks import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
COMMON = ["train.epochs=2", "train.val_every=1", "train.device=cpu", "train.warmup_steps=2"]
# Per task: config, data folder (under the generated root), small overrides.
SMALL = {
    "classify": ("classify_shapes.yaml", "classify", ["data.imgsz=32", "train.batch=8"]),
    "yolo": ("yolo_shapes.yaml", "", ["data.imgsz=64", "train.batch=4", "model.neck_width=8"]),
    "segment": ("segment_shapes.yaml", "", ["data.imgsz=64", "train.batch=4", "model.hidden=0"]),
    "faster_rcnn": ("faster_rcnn_shapes.yaml", "", [
        "data.imgsz=64", "train.batch=4", "model.fpn_channels=16", "model.roi_head_width=32",
        "model.rpn_pre_nms_top_n_train=100", "model.rpn_post_nms_top_n_train=50",
        "model.rpn_pre_nms_top_n_test=50", "model.rpn_post_nms_top_n_test=20", "model.box_batch_size_per_image=16"]),
    "multitask": ("multitask_shapes.yaml", "", ["data.imgsz=64", "train.batch=4",
                                                 "model.heads.detect.neck_width=8"]),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("repro"), SynthSpec(
        n_train=8, n_val=4, imgsz=64, n_crops_per_class=(4, 2), crop_size=32, video_frames=1), progress=False)


def _metrics(task: str, root: Path, out: Path, *extra: str) -> list[dict[str, str]]:
    config, sub, args = SMALL[task]
    cfg = load_config(CONFIGS / config, [f"data.root={root / sub}", f"out={out}", *COMMON, *args, *extra])
    assert cfg.augment.train, "the test must run with random augmentation on"
    train(cfg, progress=False, log=lambda msg: None)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    for row in rows:
        row.pop("time_s")  # wall-clock: the one column that may differ
    return rows


@pytest.mark.parametrize("task", list(SMALL))
def test_two_runs_of_the_same_config_give_identical_metrics(task: str, tiny: Path, tmp_path: Path) -> None:
    first = _metrics(task, tiny, tmp_path / "a")
    assert len(first) == 2 and any(k.startswith("val/") for k in first[0])
    assert _metrics(task, tiny, tmp_path / "b") == first


def test_the_seed_matters_and_workers_are_seeded(tiny: Path, tmp_path: Path) -> None:
    """Another train.seed trains differently (so the equality above is not vacuous); with DataLoader
    worker processes (each augmenting its own copy of the dataset) two runs still agree."""
    base = _metrics("classify", tiny, tmp_path / "a")
    assert _metrics("classify", tiny, tmp_path / "b", "train.seed=1") != base
    workers = _metrics("classify", tiny, tmp_path / "c", "data.workers=2")
    assert _metrics("classify", tiny, tmp_path / "d", "data.workers=2") == workers
