"""Hostile input and hostile environments: outputs never replace inputs, output modes follow the
umask, a full disk or a file-size limit is one line, a bad ``out`` fails before any work, training
never offers a non-finite checkpoint and refuses a train split without usable annotations."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cvapps.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from cvapps.cli import main
from cvapps.tasks import load_config
from cvapps.data.synth import SynthSpec, generate_shapes
from cvapps.engine.train import train
from cvapps.errors import CvappsError, DataError, OutputError
from cvapps.io.guard import check_writable_target, protected
from cvapps.io.images import write_image
from fault_corpus import tree_digest
from tiny_checkpoints import ROOT, SHAPES, make_checkpoint


@pytest.fixture(scope="module")
def yolo_model(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("m") / "yolo.pt", "yolo_shapes.yaml", ["data.imgsz=64"],
                           SHAPES, [1, 2, 3])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes"), SynthSpec(n_train=4, n_val=2, imgsz=48,
                           n_crops_per_class=(8, 2), crop_size=32, video_frames=1), progress=False)


def _photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i}.jpg"), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    return folder


# ------------------------------------------------------------------------ outputs never on inputs
def test_detect_refuses_out_on_the_input_folder_or_file(yolo_model: Path, tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    photos = _photos(tmp_path / "photos")
    before = tree_digest(tmp_path)
    model = ["--model", str(yolo_model), "--quiet", "--device", "cpu"]
    assert main(["detect", str(photos), *model, "--out", str(photos)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "inside the input folder" in err and err.count("\n") == 1, err
    assert main(["detect", str(photos), *model, "--out", str(photos / "annotated")]) == 1  # read back next run
    assert "inside the input folder" in capsys.readouterr().err
    monkeypatch.chdir(photos)
    assert main(["detect", "p0.jpg", *model, "--out", "."]) == 1
    err = capsys.readouterr().err
    assert "holds the input p0.jpg" in err and err.count("\n") == 1, err
    assert tree_digest(tmp_path) == before, "the inputs must be left byte-for-byte unchanged"
    # A legitimate --out still works, and the registry is forgotten once the command is done.
    assert main(["detect", "p0.jpg", *model, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "p0.jpg").is_file()
    write_image(tmp_path / "out" / "p0.jpg", np.zeros((4, 4, 3), np.uint8))


def test_every_low_level_writer_refuses_a_registered_input(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    (tmp_path / "link.jpg").symlink_to(photos / "p0.jpg")
    os.link(photos / "p1.jpg", tmp_path / "hard.jpg")
    before = tree_digest(tmp_path)
    with protected(files=[photos / "p0.jpg", photos / "p1.jpg"], folders=[tmp_path / "tree"]):
        for target in (photos / "p0.jpg", tmp_path / "link.jpg", tmp_path / "hard.jpg", tmp_path / "tree" / "x.jpg"):
            with pytest.raises(OutputError, match="is an input of this command"):
                write_image(target, np.zeros((4, 4, 3), np.uint8))
            with pytest.raises(OutputError, match="is an input of this command"):
                atomic_write_text(target, "x")
        atomic_write_text(tmp_path / "fine.txt", "x")  # anything else is written as usual
    with protected(tmp_path / "out", others=[photos / "gt.json", None]):  # e.g. --coco-gt: writes only
        with pytest.raises(OutputError, match="is an input of this command"):
            atomic_write_text(photos / "gt.json", "{}")
    assert tree_digest(tmp_path) == {**before, "fine.txt": tree_digest(tmp_path)["fine.txt"]}
    atomic_write_text(photos / "p0.txt", "x")  # outside the block nothing is protected any more
    check_writable_target(photos / "p0.jpg")


def test_merge_json_output_may_not_be_an_input(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    b.write_text(json.dumps([{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    before = tree_digest(tmp_path)
    assert main(["merge-json", str(a), str(a), str(b)]) == 1
    err = capsys.readouterr().err
    assert "is one of the inputs" in err and err.count("\n") == 1
    assert tree_digest(tmp_path) == before


def test_data_convert_out_may_not_lie_inside_the_source_images(shapes: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "ds"
    shutil.copytree(shapes / "images", root / "images")
    shutil.copytree(shapes / "annotations", root / "annotations")
    before = tree_digest(root)
    assert main(["data", "convert", str(root), "--to", "yolo", "--out", str(root / "images" / "train")]) == 1
    err = capsys.readouterr().err
    assert "is inside the input folder" in err and err.count("\n") == 1, err
    assert tree_digest(root) == before
    assert main(["data", "convert", str(root), "--to", "yolo", "--out", str(tmp_path / "yolo")]) == 0


# ------------------------------------------------------------------------ modes, disk full, ulimit
def test_atomic_writes_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        save_checkpoint(tmp_path / "c.pt", {"task": "classify", "config": {}, "class_names": [],
                                            "preprocessing": {}, "model": {}})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_file_size_limit_is_one_line_and_keeps_the_previous_file(tmp_path: Path) -> None:
    # `ulimit -f`: without SIGXFSZ ignored the process would die of the signal; here the write
    # fails with EFBIG, reported as one line, and the earlier output survives whole.
    a, out = tmp_path / "a.json", tmp_path / "merged.json"
    a.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:06d}.jpg"} for i in range(2000)],
                             "annotations": [], "categories": []}))
    out.write_text("previous")
    limit = 4096

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, "-m", "cvapps", "merge-json", str(out), str(a)], capture_output=True,
                            text=True, preexec_fn=cap, timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr[-500:])
    assert result.stderr.strip().splitlines() == [f"error: could not write {out}: File too large"]
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "merged.json"]  # no temporary left


def test_checkpoint_past_a_file_size_limit_names_the_reason(tmp_path: Path) -> None:
    # torch.save itself reports a failed write as "unexpected pos ..."; the message must say why.
    path = tmp_path / "last.pt"
    path.write_bytes(b"previous")
    script = ("import signal, torch; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "from cvapps.checkpoint import save_checkpoint\nfrom cvapps.errors import OutputError\n"
              "ckpt = {'task': 'classify', 'config': {}, 'class_names': [], 'preprocessing': {},"
              " 'model': {'w': torch.zeros(100_000)}}\n"
              f"try:\n    save_checkpoint({str(path)!r}, ckpt)\nexcept OutputError as exc:\n    print(exc)\n")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=cap,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.strip() == f"could not write {path}: File too large"
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_disk_full_during_a_checkpoint_save_is_one_line(shapes: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import cvapps.checkpoint as checkpoint

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"previous")

    def full(obj, tmp) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "_torch_save", full)
    rc = main(["train", str(ROOT / "configs/classify_shapes.yaml"), f"data.root={shapes / 'classify'}", f"out={out}",
               "train.epochs=1", "data.imgsz=32", "data.workers=0", "train.device=cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.strip().splitlines()[-1] == f"error: could not write {out / 'last.pt'}: No space left on device"
    assert "Traceback" not in err
    assert (out / "last.pt").read_bytes() == b"previous"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("bad", ["file", "/proc/cvapps-x"])
def test_train_refuses_a_bad_out_before_loading_data(tmp_path: Path, bad: str, capsys) -> None:
    out = tmp_path / "a_file" if bad == "file" else Path(bad)
    if bad == "file":
        out.write_text("keep me")
    # data.root does not exist: the out check must come first to be the error we see.
    rc = main(["train", str(ROOT / "configs/classify_shapes.yaml"), f"data.root={tmp_path / 'absent'}", f"out={out}"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"error: out={out}") and err.count("\n") == 1, err
    assert ("is an existing file" if bad == "file" else "cannot write there") in err
    if bad == "file":
        assert out.read_text() == "keep me"


def test_train_without_usable_annotations_is_an_error(shapes: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(shapes / "images", root / "images")
    for split in ("train", "val"):
        doc = json.loads((shapes / "annotations" / f"{split}.json").read_text())
        if split == "train":  # every box malformed: dropped by the data-check rules
            doc["annotations"] = [{**a, "bbox": "oops", "segmentation": "oops"} for a in doc["annotations"]]
        (root / "annotations" / f"{split}.json").write_text(json.dumps(doc))
    cfg = load_config(ROOT / "configs/yolo_shapes.yaml", [f"data.root={root}", f"out={tmp_path / 'r'}",
                                                          "data.imgsz=64", "data.workers=0", "train.device=cpu"])
    with pytest.raises(DataError) as info:
        train(cfg, progress=False, log=lambda m: None)
    assert "no usable annotations" in str(info.value) and f"cvapps data check {root}" in str(info.value)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_checkpoints_stay_finite_when_nan_reaches_batchnorm(shapes: Path, tmp_path: Path, monkeypatch) -> None:
    # NaN *inputs* (not only a NaN loss) poison BatchNorm's running statistics in the forward pass
    # of a step that is then skipped; the skipped step must leave them as they were.
    from cvapps.tasks import classify

    original, calls = classify.Classifier.forward, []

    def forward(self, images, targets=None):
        if self.training and targets is not None:
            calls.append(1)
            if len(calls) in (2, 3):
                images = images * float("nan")
        return original(self, images, targets)

    monkeypatch.setattr(classify.Classifier, "forward", forward)
    log: list[str] = []
    cfg = load_config(ROOT / "configs/classify_shapes.yaml", [
        f"data.root={shapes / 'classify'}", f"out={tmp_path}", "train.epochs=1", "train.batch=4", "data.imgsz=32",
        "data.workers=0", "train.device=cpu", "train.max_bad_steps=3"])
    result = train(cfg, progress=False, log=log.append)
    assert len([m for m in log if m.startswith("warning: non-finite loss")]) == 2
    for path in (result.last, result.best):
        state = load_checkpoint(path)["model"]
        assert any("running_mean" in k for k in state)
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert bad == [], bad


def test_non_finite_weights_are_never_saved(shapes: Path, tmp_path: Path, monkeypatch) -> None:
    from cvapps.engine import train as train_module

    monkeypatch.setattr(train_module, "_restore", lambda buffers, saved: None)  # as before the fix
    from cvapps.tasks import classify

    original = classify.Classifier.forward

    def forward(self, images, targets=None):
        if self.training and targets is not None:
            images = images * float("nan")  # every step: BN statistics turn NaN
        return original(self, images, targets)

    monkeypatch.setattr(classify.Classifier, "forward", forward)
    cfg = load_config(ROOT / "configs/classify_shapes.yaml", [
        f"data.root={shapes / 'classify'}", f"out={tmp_path}", "train.epochs=1", "train.batch=64", "data.imgsz=32",
        "data.workers=0", "train.device=cpu", "train.max_bad_steps=5"])
    with pytest.raises(CvappsError) as info:
        train(cfg, progress=False, log=lambda m: None)
    assert "not finite" in str(info.value) and "no checkpoint was written yet" in str(info.value)
    assert not (tmp_path / "last.pt").exists()
