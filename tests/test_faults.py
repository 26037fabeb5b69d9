"""Faults and bad input: the fault corpus through every predict command, bad annotations,
SIGKILL + resume, non-finite losses, and loading only safe checkpoints."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cvapps.checkpoint import load_checkpoint
from cvapps.cli import main
from cvapps.tasks import load_config
from cvapps.data.synth import SynthSpec, generate_shapes
from cvapps.engine.train import train
from cvapps.errors import CheckpointError, CvappsError
from fault_corpus import EXPECTED_REASONS, tree_digest
from tiny_checkpoints import ROOT, SHAPES, make_checkpoint






@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "classify": make_checkpoint(d / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES),
        "segment": make_checkpoint(d / "seg.pt", "segment_shapes.yaml", ["data.imgsz=64"], ["background", *SHAPES]),
        "detect": make_checkpoint(d / "yolo.pt", "yolo_shapes.yaml", ["data.imgsz=64"], SHAPES, [1, 2, 3]),
    }


# ------------------------------------------------------------------------------------ fault corpus
@pytest.mark.parametrize("command", ["classify", "segment", "detect"])
def test_fault_corpus_every_command(command: str, corpus, models, tmp_path: Path, capsys) -> None:
    folder, expected = corpus
    before = tree_digest(folder)
    out = tmp_path / "out"
    rc = main([command, str(folder), "--model", str(models[command]), "--out", str(out), "--quiet",
               "--device", "cpu", "--batch", "4"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err
    good = sorted(k for k, ok in expected.items() if ok)
    bad = sorted(k for k, ok in expected.items() if not ok)
    assert f"processed {len(good)} images, skipped {len(bad)} unreadable files" in captured.out
    for name in bad:  # each bad file is reported once, with its reason
        line = f"skipped {folder / name}: {EXPECTED_REASONS[name]}"
        assert captured.err.count(line) == 1, (line, captured.err)
    assert tree_digest(folder) == before, "the input folder must be left byte-for-byte unchanged"
    if command == "classify":
        rows = (out / "predictions.csv").read_text().strip().splitlines()[1:]
        assert sorted(Path(r.split(",")[0]).relative_to(folder).as_posix() for r in rows) == good


# -------------------------------------------------------------------------------- bad annotations
def _bad_coco(root: Path, good_image: Path) -> Path:
    (root / "images" / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    for stem in ("a", "b"):
        shutil.copy(good_image, root / "images" / "train" / f"{stem}.jpg")
    shutil.copy(good_image, root.parent / "outside.jpg")  # exists, but outside ROOT
    images = [{"id": 1, "file_name": "a.jpg", "width": 48, "height": 48},
              {"id": 2, "file_name": "b.jpg", "width": 48, "height": 48},
              {"id": 3, "file_name": "missing.jpg", "width": 48, "height": 48},
              {"id": 4, "file_name": "../../../outside.jpg", "width": 48, "height": 48},
              {"id": 5, "file_name": str(root.parent / "outside.jpg"), "width": 48, "height": 48}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 99, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [30, 30, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},
            {"id": 5, "image_id": 2, "category_id": 3, "bbox": "oops", "area": 0, "iscrowd": 0}]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES)]
    path = root / "annotations" / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_bad_annotations_give_a_report_not_a_traceback(corpus, tmp_path: Path, capsys) -> None:
    folder, _ = corpus
    root = tmp_path / "ds"
    ann = _bad_coco(root, folder / "nested" / "inner.jpg")
    before = tree_digest(tmp_path)
    assert main(["data", "check", str(root)]) == 1  # problems found -> non-zero, with a report
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    for what in ("missing.jpg does not exist", "'../../../outside.jpg' points outside",
                 "outside.jpg' points outside", "category_id 99 is not in categories",
                 "clamped to the 48x48 image", "has no area", "malformed_entries"):
        assert what in text, (what, text)
    assert tree_digest(tmp_path) == before, "checking must not modify the dataset"

    # Not a COCO dataset at all: one line each, from `data check` and from `train`.
    for content, reason in (('{"images": [', "not valid JSON"), ("[1, 2]", "must be a JSON object"),
                            ('{"images": [], "annotations": {}, "categories": []}', "list")):
        ann.write_text(content)
        assert main(["data", "check", str(root)]) == 1
        err = capsys.readouterr().err
        assert reason in err and err.startswith("error:") and err.count("\n") == 1, err
        rc = main(["train", str(ROOT / "configs" / "yolo_shapes.yaml"), f"data.root={root}", f"out={tmp_path / 'r'}",
                   "data.workers=0", "train.device=cpu", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 1 and reason in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------ kill and resume
@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    data = generate_shapes(tmp_path_factory.mktemp("shapes"), SynthSpec(n_train=2, n_val=1, imgsz=48,
                           n_crops_per_class=(24, 4), crop_size=32, video_frames=1), progress=False)
    return data / "classify"


def _cfg_args(data: Path, out: Path, epochs: int) -> list[str]:
    # No augmentation and no dropout: every random draw then comes from the per-epoch shuffle,
    # so an interrupted + resumed run can be compared with an uninterrupted one exactly.
    return [f"data.root={data}", f"out={out}", f"train.epochs={epochs}", "train.batch=8", "data.imgsz=32",
            "data.workers=0", "train.device=cpu", "augment.train=[]", "model.dropout=0", "train.warmup_steps=3"]


def test_sigkill_mid_epoch_then_resume_continues_exactly(crops: Path, tmp_path: Path) -> None:
    out, ref_out = tmp_path / "run", tmp_path / "ref"
    args = _cfg_args(crops, out, 3)
    cmd = [sys.executable, "-m", "cvapps", "train", str(ROOT / "configs" / "classify_shapes.yaml"), *args, "--quiet"]
    # One thread in both processes: CPU kernels are then bit-reproducible, so the resumed run can be
    # compared with an uninterrupted one exactly (multi-threaded reductions differ run to run).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    threads = torch.get_num_threads()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        for line in proc.stdout:  # "epoch 1: ..." is logged after last.pt, metrics and plots of epoch 1
            lines.append(line)
            if line.startswith("epoch 1:"):
                break
            assert time.monotonic() < deadline, "".join(lines)
        # Frozen mid epoch 2 at once (the checks below take longer than a tiny epoch), then killed:
        # last.pt must load (it is replaced atomically) and still be epoch 1's.
        os.killpg(proc.pid, signal.SIGSTOP)
        assert load_checkpoint(out / "last.pt", "classify")["epoch"] == 1
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    killed = load_checkpoint(out / "last.pt", "classify")
    assert killed["epoch"] == 1, "the kill must land before epoch 2 was saved"
    steps = killed["train_state"]["scheduler"]["last_epoch"]
    assert steps == 9  # 72 crops / batch 8

    cfg = load_config(ROOT / "configs" / "classify_shapes.yaml", args + ["train.resume=true"])
    log: list[str] = []
    torch.set_num_threads(1)
    try:
        result = train(cfg, progress=False, log=log.append)
        reference = train(load_config(ROOT / "configs" / "classify_shapes.yaml", _cfg_args(crops, ref_out, 3)),
                          progress=False, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    assert any("resuming from" in m and "after epoch 1" in m for m in log), log
    assert not any(m.startswith("epoch 1:") for m in log)
    assert [int(r["epoch"]) for r in result.history] == [1, 2, 3]
    assert result.history[0] == killed["train_state"]["history"][0]  # epoch 1 kept, not re-run

    resumed = load_checkpoint(out / "last.pt", "classify")
    assert resumed["epoch"] == 3 and resumed["train_state"]["scheduler"]["last_epoch"] == 3 * steps
    adam_steps = {float(s["step"]) for s in resumed["train_state"]["optimizer"]["state"].values()}
    assert adam_steps == {3.0 * steps}  # optimizer state continued (a fresh one would count 2 epochs)

    ref = load_checkpoint(reference.last, "classify")
    # Same weights as a run that was never interrupted (single-threaded CPU: 0 difference measured;
    # the bound leaves room for libm differences). A resume that lost the optimizer/scheduler state
    # or replayed another data order does not match to this precision.
    fresh = {k: v for k, v in ref["model"].items() if v.is_floating_point()}
    worst = max(float((resumed["model"][k] - v).norm() / v.norm().clamp(min=1e-12)) for k, v in fresh.items())
    print(f"max relative weight difference, resumed vs uninterrupted: {worst:.2e}")
    assert worst < 1e-5, worst


# --------------------------------------------------------------------------------- NaN / inf loss
def _poison(monkeypatch, bad: set[int], kind: str = "nan") -> list[int]:
    """Make the classifier's loss (or its gradient) non-finite on the given 0-based train steps."""
    from cvapps.tasks import classify

    calls: list[int] = []
    original = classify.Classifier.forward

    def forward(self, images, targets=None):
        out = original(self, images, targets)
        if isinstance(out, dict):
            step = len(calls)
            calls.append(step)
            if step in bad:
                loss = out["loss_cls"]
                if kind == "nan":
                    out["loss_cls"] = loss * float("nan")
                else:  # finite loss, non-finite gradient: d sqrt(x)/dx at 0 is inf
                    out["loss_cls"] = loss + torch.sqrt((loss * 0).abs())
        return out

    monkeypatch.setattr(classify.Classifier, "forward", forward)
    return calls


def test_non_finite_losses_are_skipped_then_stop_with_a_valid_checkpoint(crops: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    base = _cfg_args(crops, tmp_path / "a", 2) + ["train.max_bad_steps=3"]
    cfg_path = ROOT / "configs" / "classify_shapes.yaml"

    # A few bad steps (NaN loss, then an inf gradient) are skipped with a warning; training finishes.
    _poison(monkeypatch, {2, 3, 7}, "nan")
    log: list[str] = []
    result = train(load_config(cfg_path, base), progress=False, log=log.append)
    warnings = [m for m in log if m.startswith("warning: non-finite loss")]
    assert len(warnings) == 3 and "step skipped" in warnings[0]
    ckpt = load_checkpoint(result.last)
    assert ckpt["train_state"]["scheduler"]["last_epoch"] == 2 * 9 - 3  # skipped steps did not step
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())

    monkeypatch.undo()
    _poison(monkeypatch, {4}, "grad")
    log = []
    result = train(load_config(cfg_path, _cfg_args(crops, tmp_path / "g", 1) + ["train.max_bad_steps=3"]),
                   progress=False, log=log.append)
    assert [m for m in log if m.startswith("warning: non-finite gradient")], log
    assert all(torch.isfinite(v).all() for v in load_checkpoint(result.last)["model"].values() if v.is_floating_point())

    # Several in a row (every step of epoch 2) stop training with a clear message; last.pt is epoch 1's.
    monkeypatch.undo()
    _poison(monkeypatch, set(range(9, 100)), "nan")
    out = tmp_path / "b"
    log = []
    with pytest.raises(CvappsError) as err:
        train(load_config(cfg_path, _cfg_args(crops, out, 2) + ["train.max_bad_steps=3"]), progress=False,
              log=log.append)
    msg = str(err.value)
    assert "3 non-finite losses in a row at epoch 2" in msg and str(out / "last.pt") in msg and "\n" not in msg
    ckpt = load_checkpoint(out / "last.pt", "classify")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())

    # From the very first step: no checkpoint exists, and the message says so.
    monkeypatch.undo()
    _poison(monkeypatch, set(range(100)), "nan")
    with pytest.raises(CvappsError, match="no checkpoint was written yet"):
        train(load_config(cfg_path, _cfg_args(crops, tmp_path / "c", 1) + ["train.max_bad_steps=2"]),
              progress=False, log=lambda m: None)


# ------------------------------------------------------------------------------ safe loading only
def test_foreign_pickles_are_refused_with_a_clear_error(models, tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "foreign.pt"
    # Needs a class to unpickle (as ultralytics .pt files do): weights_only=True refuses it.
    torch.save({"format": "cvapps-checkpoint-v1", "task": "classify", "args": argparse.Namespace(lr=0.1)}, foreign)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(foreign)
    assert main(["classify", str(tmp_path), "--model", str(foreign), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a cvapps checkpoint" in err and err.count("\n") == 1
    # Our own checkpoints load with weights_only=True.
    assert torch.load(models["classify"], weights_only=True)["task"] == "classify"
