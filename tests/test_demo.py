"""`cvapps demo`: the shipped checkpoints classify, segment and detect the sample folder and video."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from cvapps.checkpoint import load_checkpoint
from cvapps.io.sinks import count_video_frames

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "sample_data" / "models"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    # Run from an unrelated folder: the demo must find the shipped data and models by itself.
    proc = subprocess.run([sys.executable, "-m", "cvapps", "demo", "--out", str(out), "--device", "cpu", "--quiet"],
                          cwd=out.parent, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_outputs_exist_and_are_printed(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    expected = [out / "classify" / "predictions.csv",
                out / "segment" / "images" / "predictions_coco.json", out / "segment" / "images" / "predictions.json",
                out / "segment" / "video" / "shapes.mp4",
                out / "detect" / "images" / "predictions_coco.json", out / "detect" / "images" / "predictions.json",
                out / "detect" / "video" / "shapes.mp4", out / "detect" / "video" / "predictions_coco.json"]
    for path in expected:
        assert path.is_file() and path.stat().st_size > 0, path
        assert str(path) in stdout, path  # the demo says where each output is
    assert len(list((out / "segment" / "images" / "overlays").glob("*.jpg"))) == 40
    assert len(list((out / "detect" / "images" / "annotated").glob("*"))) == 40
    for task in ("segment", "detect"):
        assert count_video_frames(out / task / "video" / "shapes.mp4") == 240


def test_classifier_gets_held_out_crops_right(demo: tuple[Path, str]) -> None:
    rows = list(csv.DictReader((demo[0] / "classify" / "predictions.csv").open()))
    assert len(rows) == 120
    assert sum(Path(r["path"]).parent.name == r["label"] for r in rows) / len(rows) >= 0.9


@pytest.mark.parametrize("task, kind", [("segment", "segm"), ("detect", "bbox")])
def test_coco_files_load_in_pycocotools(demo: tuple[Path, str], task: str, kind: str) -> None:
    folder = demo[0] / task / "images"
    dataset = _coco(folder / "predictions_coco.json")
    assert len(dataset.getImgIds()) == 40
    assert {c["name"] for c in dataset.loadCats(dataset.getCatIds())} == {"circle", "square", "triangle"}
    results = json.loads((folder / "predictions.json").read_text())
    assert len(results) == len(dataset.getAnnIds()) > 40  # several shapes per image
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = dataset.loadRes(str(folder / "predictions.json"))
    assert all(kind == "bbox" or "segmentation" in a for a in loaded.dataset["annotations"])


def test_detector_scores_well_and_finds_objects_in_the_video(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    line = next(s for s in stdout.splitlines() if "mAP@.5" in s)
    assert float(line.split("mAP@.5 ")[1].split()[0]) >= 0.8
    video = _coco(out / "detect" / "video" / "predictions_coco.json")
    assert len(video.getImgIds()) == 240
    with_objects = {a["image_id"] for a in video.dataset["annotations"]}
    assert len(with_objects) >= 0.9 * 240
    assert {a["category_id"] for a in video.dataset["annotations"]} == set(video.getCatIds())


def test_shipped_models_are_small_inference_checkpoints() -> None:
    files = sorted(MODELS.glob("*.pt"))
    assert [f.name for f in files] == ["classify.pt", "detect.pt", "segment.pt"]
    assert sum(f.stat().st_size for f in files) < 8 * 2**20
    for f in files:
        ckpt = load_checkpoint(f)
        assert ckpt["train_state"] is None
        for key in (ckpt["config"]["data"]["root"], ckpt["config"]["out"]):
            assert not Path(key).is_absolute()  # no path of the machine that made it
