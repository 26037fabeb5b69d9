"""Classification end to end: train, val, classify a folder holding bad files, summary."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from cvapps.cli import main
from fault_corpus import tree_digest
from cvapps.engine.summary import summarize

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def trained(small_shapes: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cls_run")
    code = main(["train", str(REPO / "configs/classify_shapes.yaml"), f"data.root={small_shapes / 'classify'}",
                 "train.epochs=2", "data.imgsz=48", f"out={out}", "train.device=cpu", "--quiet"])
    assert code == 0
    return out


def test_train_writes_outputs(trained: Path) -> None:
    for name in ("last.pt", "best.pt", "metrics.csv", "loss.png", "metrics.png"):
        assert (trained / name).is_file(), name
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert 0.0 <= float(rows[-1]["val/accuracy"]) <= 1.0
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    assert ckpt["class_names"] == ["circle", "square", "triangle"] and ckpt["task"] == "classify"


def test_resume_continues_from_last(trained: Path, small_shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    code = main(["train", str(REPO / "configs/classify_shapes.yaml"), f"data.root={small_shapes / 'classify'}",
                 "train.epochs=3", "data.imgsz=48", f"out={out}", "train.device=cpu", "train.resume=true", "--quiet"])
    assert code == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3


def test_classify_folder_with_bad_files(trained: Path, small_shapes: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(small_shapes / "classify" / "val", folder)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    good = sorted(p for p in folder.rglob("*.png") if p.stat().st_size > 0)
    truncated = folder / "circle" / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:200])
    before = tree_digest(folder)
    out = tmp_path / "pred"
    assert main(["classify", str(folder), "--model", str(trained / "best.pt"), "--out", str(out), "--quiet"]) == 0
    assert tree_digest(folder) == before, "the user's folder is untouched"
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == len(good)
    assert {r["label"] for r in rows} <= {"circle", "square", "triangle"}
    assert set(rows[0]) >= {"path", "label", "score", "label_2", "score_2"}
    err = capsys.readouterr()
    assert "empty.png" in err.err and "notes.jpg" in err.err and "truncated.png" in err.err
    assert f"processed {len(good)} images, skipped 3 unreadable files" in err.out


def test_val_reports_metrics_and_confusion_matrix(trained: Path, small_shapes: Path, tmp_path: Path, capsys) -> None:
    assert main(["val", str(trained / "best.pt"), f"data.root={small_shapes / 'classify'}", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '"accuracy"' in out and '"recall/triangle"' in out and '"precision/circle"' in out
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000


def test_wrong_task_checkpoint_and_missing_root(trained: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", str(REPO / "configs/classify_shapes.yaml"), f"data.root={tmp_path / 'nope'}", "--quiet"]) == 1
    assert "data.root not found" in capsys.readouterr().err
    empty = tmp_path / "ds" / "train"
    (empty / "cat").mkdir(parents=True)
    (empty / "dog").mkdir()
    (empty / "dog" / "a.png").write_bytes(b"")
    assert main(["train", str(REPO / "configs/classify_shapes.yaml"), f"data.root={tmp_path / 'ds'}", "--quiet"]) == 1
    assert "cat: class folder has no images" in capsys.readouterr().err


def test_mnist_convnet_summary_has_104202_parameters() -> None:
    text = summarize(REPO / "configs/classify_mnist_convnet.yaml")
    assert "Total params: 104,202" in text
    assert "[1, 128, 3, 3]" in text, "the 28 -> 26 -> 13 -> 11 -> 5 -> 3 chain of (n - f + 2p)/s + 1"
