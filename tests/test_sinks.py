"""Outputs of detect/segment/classify: one image-id rule across every COCO file, video-source defaults,
mirrored folders, escaped non-UTF-8 names and the all-or-nothing close."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_checkpoints import SHAPES, make_checkpoint

from cvapps.cli import main as cli
from cvapps.io.sinks import CocoSink, StagedSink, close_all
from cvapps.structures import Detections, Frame, Prediction


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {"detect": make_checkpoint(d / "yolo.pt", "yolo_shapes.yaml", ["data.imgsz=64"], SHAPES, [1, 2, 3]),
            "segment": make_checkpoint(d / "seg.pt", "segment_shapes.yaml", ["data.imgsz=64"],
                                       ["background", *SHAPES]),
            "classify": make_checkpoint(d / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)}


def _run(*argv: str) -> None:
    assert cli([*argv, "--quiet", "--device", "cpu"]) == 0


def _images(out: Path) -> list[tuple[int, str]]:
    return [(im["id"], im["file_name"]) for im in json.loads((out / "predictions_coco.json").read_text())["images"]]


def test_one_image_id_rule_in_every_coco_output(small_shapes: Path, ckpts: dict[str, Path], tmp_path: Path) -> None:
    """Issue 10 acceptance: the same image/frame has the same id and file_name in predictions.json,
    predictions_coco.json, per-frame video COCO and segmentation COCO."""
    folder = tmp_path / "in"
    shutil.copytree(small_shapes / "images" / "val", folder / "sub")
    for p in sorted((small_shapes / "images" / "train").glob("*.jpg"))[:2]:
        shutil.copy(p, folder / p.name)
    video = small_shapes / "video" / "shapes.mp4"
    for name, source in (("folder", folder), ("video", video)):
        det, seg = tmp_path / f"det_{name}", tmp_path / f"seg_{name}"
        _run("detect", str(source), "--model", str(ckpts["detect"]), "--out", str(det), "--save-json", "--conf", "0")
        _run("segment", str(source), "--model", str(ckpts["segment"]), "--out", str(seg), "--save-json")
        images = _images(det)
        assert images == _images(seg) and len(images) == (10 if name == "folder" else 24)
        assert [i for i, _ in images] == list(range(1, len(images) + 1))
        names = [f for _, f in images]
        if name == "folder":
            assert sorted(names) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
        else:
            assert names == [f"shapes.mp4#frame={k:06d}" for k in range(24)]
        for out in (det, seg):  # results point at those ids
            results = json.loads((out / "predictions.json").read_text())
            assert results and {r["image_id"] for r in results} <= {i for i, _ in images}
            assert not [f for f in os.listdir(out) if f.startswith(".")], "temp files left behind"
        ann = json.loads((seg / "predictions_coco.json").read_text())["annotations"]
        results = json.loads((seg / "predictions.json").read_text())
        assert ann and {a["image_id"] for a in ann} == {r["image_id"] for r in results}

    # with --save-images a video frame's file_name is the image written for it (relative to OUT)
    vid = tmp_path / "det_video_images"
    _run("detect", str(video), "--model", str(ckpts["detect"]), "--out", str(vid), "--save-json", "--save-images",
         "--vid-stride", "8")
    images = _images(vid)
    assert [f for _, f in images] == ["shapes_000000.jpg", "shapes_000008.jpg", "shapes_000016.jpg"]
    assert all((vid / f).is_file() for _, f in images) and (vid / "shapes.mp4").is_file()
    segv = tmp_path / "seg_video_images"
    _run("segment", str(video), "--model", str(ckpts["segment"]), "--out", str(segv), "--save-json", "--save-images",
         "--vid-stride", "8")
    assert [i for i, _ in _images(segv)] == [i for i, _ in images]
    assert all((segv / f).is_file() for _, f in _images(segv))


def test_video_source_defaults_to_an_annotated_video(small_shapes: Path, ckpts: dict[str, Path],
                                                     tmp_path: Path) -> None:
    out = tmp_path / "v"
    _run("detect", str(small_shapes / "video" / "shapes.mp4"), "--model", str(ckpts["detect"]), "--out", str(out))
    # frames are not files: the annotated video and the JSON pair, no per-frame JPEGs
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json", "predictions_coco.json", "shapes.mp4"]
    from cvapps.io.sinks import count_video_frames

    assert count_video_frames(out / "shapes.mp4") == 24
    names = [im["file_name"] for im in json.loads((out / "predictions_coco.json").read_text())["images"]]
    assert len(names) == 24 and names[0] == "shapes.mp4#frame=000000", names[:2]
    img = tmp_path / "i"
    _run("detect", str(small_shapes / "images" / "val"), "--model", str(ckpts["detect"]), "--out", str(img))
    assert len(list(img.glob("*.jpg"))) == 8 and not list(img.glob("*.mp4"))


def test_segment_mirrors_sub_folders(small_shapes: Path, ckpts: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "in"
    one = sorted((small_shapes / "images" / "val").glob("*.jpg"))[0]
    for sub in ("a", "b"):
        (src / sub).mkdir(parents=True)
        shutil.copy(one, src / sub / "cat.jpg")
    shutil.copy(one, src / "cat.jpg")
    out = tmp_path / "out"
    _run("segment", str(src), "--model", str(ckpts["segment"]), "--out", str(out), "--save-json")
    rel = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert rel(out / "overlays") == ["a/cat.jpg", "b/cat.jpg", "cat.jpg"]
    assert rel(out / "masks") == ["a/cat.png", "b/cat.png", "cat.png"]
    assert sorted(f for _, f in _images(out)) == ["a/cat.jpg", "b/cat.jpg", "cat.jpg"]


def test_non_utf8_file_name_is_kept_escaped(small_shapes: Path, ckpts: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    one = sorted((small_shapes / "classify" / "val").rglob("*.png"))[0]
    try:
        shutil.copy(one, os.path.join(os.fsencode(src), b"bad\xffname.png"))
    except OSError:
        pytest.skip("this filesystem refuses non-UTF-8 names")
    shutil.copy(one, src / "good.png")
    out = tmp_path / "out"
    _run("classify", str(src), "--model", str(ckpts["classify"]), "--out", str(out), "--save-jsonl")
    rows = (out / "predictions.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert sorted(r.split(",")[0].rsplit("/", 1)[-1] for r in rows) == ["bad\\xffname.png", "good.png"]
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(x["file_name"] for x in lines) == ["bad\\xffname.png", "good.png"]


class _FailOnClose(StagedSink):
    def write(self, frame, prediction) -> None:
        pass

    def prepare(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def _coco_sinks(out: Path) -> list[CocoSink]:
    sinks = [CocoSink(out / "predictions_coco.json", SHAPES, results_path=out / "predictions.json"),
             CocoSink(out / "frames.json", SHAPES)]
    det = Prediction(Detections(np.array([[1.0, 1.0, 5.0, 5.0]], np.float32), np.array([0.5], np.float32), [0]))
    for s in sinks:
        s.write(Frame(np.zeros((8, 8, 3), np.uint8), "a.jpg", 0), det)
    return sinks


def test_close_all_is_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    errors = close_all([*_coco_sinks(out), _FailOnClose()])
    assert errors and "no space left on device" in errors[-1]
    assert "predictions.json" in errors[-1] and "frames.json" in errors[-1]
    assert not out.exists() or not list(out.iterdir()), "neither outputs nor temp files may be left"
    old = os.umask(0o022)
    try:
        assert close_all(_coco_sinks(out)) == []
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["frames.json", "predictions.json", "predictions_coco.json"]
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}  # the umask's mode, not mkstemp's 0600
    failed_run = tmp_path / "failed"
    assert close_all(_coco_sinks(failed_run), commit=False)[-1].startswith("outputs not written (the run failed)")
    assert not failed_run.exists() or not list(failed_run.iterdir())


def test_failed_close_in_a_run_is_one_line(small_shapes: Path, ckpts: dict[str, Path], tmp_path: Path,
                                           monkeypatch, capsys) -> None:
    from cvapps.io.sinks import coco

    def full(self, path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(coco.CocoSink, "stage_text", full)
    out = tmp_path / "out"
    assert cli(["detect", str(small_shapes / "images" / "val"), "--model", str(ckpts["detect"]), "--out", str(out),
                "--save-json", "--save-jsonl", "--quiet", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "outputs not written" in err and "predictions.jsonl" in err and "Traceback" not in err
    assert not (out / "predictions.jsonl").exists() and not (out / "predictions.json").exists()
    assert not [f for f in os.listdir(out) if f.startswith(".")]


def test_file_size_limit_leaves_no_partial_outputs(small_shapes: Path, ckpts: dict[str, Path], tmp_path: Path) -> None:
    """``ulimit -f``: the mp4 is cut short; the run says which outputs were not
    written and leaves neither the short video nor the JSON files that would have matched it."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "out"
    limit = 4 * 1024  # under the H.264 video (about 12 KB), over each JSON file

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "cvapps", "detect", str(small_shapes / "video" / "shapes.mp4"),
                           "--model", str(ckpts["detect"]), "--out", str(out), "--save-json", "--quiet",
                           "--device", "cpu"], preexec_fn=small_files, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "outputs not written" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not out.exists() or sorted(os.listdir(out)) == []


def test_cut_short_video_is_refused(tmp_path: Path) -> None:
    from cvapps.io.sinks import VideoWriterSink, make_drawer
    from cvapps.io.sinks.video import _mp4_complete

    sink = VideoWriterSink(tmp_path / "v.mp4", make_drawer(SHAPES), fps=10)
    rng = np.random.default_rng(0)
    for k in range(10):
        sink.write(Frame.of_video(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "v.mp4", k, 0.0),
                   Prediction(Detections.empty()))
    sink.close()
    whole = (tmp_path / "v.mp4").read_bytes()
    assert _mp4_complete(tmp_path / "v.mp4")
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    assert not _mp4_complete(tmp_path / "cut.mp4")


def test_failed_run_writes_none_of_its_files(tmp_path: Path) -> None:
    from cvapps.io.sinks import JsonLinesSink, VideoWriterSink, make_drawer

    frame = Frame.of_video(np.zeros((48, 64, 3), np.uint8), "v.mp4", 0, 0.0)
    sinks = [VideoWriterSink(tmp_path / "v.mp4", make_drawer(SHAPES), fps=5), JsonLinesSink(tmp_path / "p.jsonl", SHAPES),
             *_coco_sinks(tmp_path)]
    for s in sinks[:2]:
        s.write(frame, Prediction(Detections.empty()))
    (line,) = close_all(sinks, commit=False)
    assert line.startswith("outputs not written (the run failed)") and "v.mp4" in line and "p.jsonl" in line
    assert list(tmp_path.iterdir()) == []
