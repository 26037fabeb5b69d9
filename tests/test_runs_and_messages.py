"""Run folders and messages: numbered predict folders, one-line errors with the exit code of their
class (cvapps.errors), no empty output folder after a failure, no OpenCV noise, singular counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cvapps.cli import main as cli
from cvapps.io.run_dirs import numbered_run

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "sample_data" / "shapes"
MODELS = ROOT / "sample_data" / "models"
IMAGE = min((SHAPES / "images" / "val").glob("*.jpg"))
CLASSIFY = ROOT / "configs" / "classify_shapes.yaml"


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_numbered_run_takes_the_first_free_name(tmp_path: Path) -> None:
    base = tmp_path / "runs" / "detect" / "predict"
    assert numbered_run(base) == base
    base.mkdir(parents=True)
    (tmp_path / "runs" / "detect" / "predict2").mkdir()
    assert numbered_run(base) == base.with_name("predict3")
    assert numbered_run(base, exist_ok=True) == base


def test_each_predict_run_gets_its_own_numbered_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    detect = ["detect", str(IMAGE), "--model", str(MODELS / "detect.pt"), "--device", "cpu", "--quiet"]
    summaries = []
    for extra in ([], [], ["--exist-ok"], ["--out", "mine"]):
        assert cli([*detect, *extra]) == 0
        summaries.append(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("processed")))
    folders = ["runs/detect/predict", "runs/detect/predict2", "runs/detect/predict", "mine"]
    for summary, folder in zip(summaries, folders):
        # one image, said in the singular, and the folder its outputs went to
        assert summary.startswith(f"processed 1 image; results in {folder};"), summary
        assert (tmp_path / folder / IMAGE.name).is_file()
    assert sorted(p.name for p in (tmp_path / "runs" / "detect").iterdir()) == ["predict", "predict2"]
    assert cli(["classify", str(IMAGE), "--model", str(MODELS / "classify.pt"), "--device", "cpu", "--quiet"]) == 0
    assert (tmp_path / "runs" / "classify" / "predict" / "predictions.csv").is_file()


# (arguments, exit code, the one line's start): one case per documented error class.
ERRORS = {
    "ConfigError: a device name that does not exist": (
        ["train", str(CLASSIFY), "train.device=gpu", "out=run"], 2, "config error: train.device: unknown device"),
    "ConfigError: an unknown key": (["train", str(CLASSIFY), "train.epoch=1", "out=run"], 2,
                                    "config error: train.epoch: unknown key"),
    "ConfigError: --device": (["detect", str(IMAGE), "--model", str(MODELS / "detect.pt"), "--device", "gpu"], 2,
                              "error: unknown device 'gpu'"),
    "DataError": (["train", str(CLASSIFY), "data.root=missing", "out=run/sub"], 1, "error: data.root not found"),
    "CheckpointError": (["detect", str(IMAGE), "--model", "missing.pt"], 1, "error: checkpoint not found"),
    "OutputError": (["detect", str(SHAPES / "images" / "val"), "--model", str(MODELS / "detect.pt"),
                     "--out", str(SHAPES / "images" / "val" / "out")], 1, "error: --out"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_with_their_exit_code_and_leave_no_folder(
        case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    args, code, start = ERRORS[case]
    monkeypatch.chdir(tmp_path)
    assert cli(args) == code
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(start), err
    assert list(tmp_path.iterdir()) == []  # no empty run/, run/sub/ or runs/... left behind
    assert not (SHAPES / "images" / "val" / "out").exists()


def test_no_webcam_is_one_line_without_opencv_noise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    if Path("/dev/video0").exists():
        pytest.skip("this machine has a camera")
    monkeypatch.chdir(tmp_path)
    assert cli(["detect", "0", "--model", str(MODELS / "detect.pt"), "--device", "cpu"]) == 1
    captured = capfd.readouterr()  # at the file-descriptor level: OpenCV's native logging included
    assert captured.err.strip().splitlines() == ["error: cannot open webcam 0"]
    assert list(tmp_path.iterdir()) == []


def test_a_val_only_dataset_evaluates_and_training_names_what_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "val_only"
    (data / "annotations").mkdir(parents=True)
    shutil.copytree(SHAPES / "images" / "val", data / "images" / "val")
    shutil.copy(SHAPES / "annotations" / "val.json", data / "annotations" / "val.json")
    monkeypatch.chdir(tmp_path)
    assert cli(["val", str(MODELS / "detect.pt"), f"data.root={data}", "train.device=cpu", "--out", "val"]) == 0
    err = capsys.readouterr().err
    assert "train" not in err and json.loads((tmp_path / "val" / "val_metrics.json").read_text())["map50"] > 0.5
    assert cli(["train", str(ROOT / "configs" / "yolo_shapes.yaml"), f"data.root={data}", "out=run"]) == 1
    assert _last_line(capsys.readouterr().err) == f"error: {data}: no 'train' split; its coco layout has 'val'"
