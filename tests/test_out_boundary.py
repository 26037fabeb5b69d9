"""Nothing is ever written outside OUT or into an input (the trust boundary of every writing command).

For each command that writes, a clean run first tells which files and folders it writes (the
"probe"); then links are planted in a fresh OUT at exactly those names (symbolic links to files
outside OUT, hard links to files outside OUT, symbolic links of its sub-folders to folders outside
OUT) and the command runs again. Every time: no byte changes outside OUT (an lstat digest of the
whole tree around it, inputs included), and the command either refuses with one line or writes its
files as fresh regular files inside OUT (never through a link, never a hard link, no temp left).

Also here: ``train out=`` / ``val --out`` inside the dataset (point 5), the Ray manifest planted as a
link, manifest records that do not hold (sizes, schema, depth, length), a file-size limit while
JSON lines are written, SIGTERM during ``data synth``, a dangling ``--out`` and synth bounds.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hostile_corpus import input_state
from tiny_checkpoints import ROOT, SHAPES, make_checkpoint

from cvapps.cli import main
from cvapps.data.synth import SynthSpec, generate_shapes

SAMPLE = ROOT / "sample_data"
QUIET = ["--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Models and a tiny dataset, copied into each test's own tree (so the digest covers them)."""
    base = tmp_path_factory.mktemp("assets")
    make_checkpoint(base / "det.pt", "yolo_shapes.yaml", ["data.imgsz=64"], SHAPES, [1, 2, 3])
    make_checkpoint(base / "seg.pt", "segment_shapes.yaml", ["data.imgsz=64"], ["background", *SHAPES])
    make_checkpoint(base / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    generate_shapes(base / "data", SynthSpec(n_train=4, n_val=2, imgsz=48, n_crops_per_class=(4, 2), crop_size=32,
                                             video_frames=2, video_size=(64, 48)), progress=False)
    imgs = base / "imgs"
    for rel in ("a.jpg", "sub/b.jpg", "sub/deeper/c.jpg"):
        (imgs / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "data" / "images" / "val" / "shapes_000000.jpg", imgs / rel)
    return base


def _world(tmp: Path, assets: Path) -> Path:
    """``tmp/inputs`` (models, dataset, images, video, lists), ``tmp/elsewhere`` (files and folders
    links point to) and an empty ``tmp/out``."""
    inputs = tmp / "inputs"
    shutil.copytree(assets, inputs)
    shutil.copy(SAMPLE / "shapes" / "video" / "shapes.mp4", inputs / "shapes.mp4")
    shutil.copy(SAMPLE / "models" / "detect.pt", inputs / "sample_detect.pt")
    (inputs / "list.txt").write_text(f"{inputs / 'imgs' / 'a.jpg'}\n")
    for name in ("a.json", "b.json"):
        (inputs / name).write_text(json.dumps([{"image_id": 1 + (name == "b.json"), "category_id": 1,
                                                "bbox": [0, 0, 4, 4], "score": 0.5}]))
    (tmp / "elsewhere").mkdir()
    (tmp / "out").mkdir()
    return tmp


# name -> argv (with WORLD standing for the test's tree and OUT for its output folder)
COMMANDS: dict[str, list[str]] = {
    "detect-folder": ["detect", "WORLD/inputs/imgs", "--model", "WORLD/inputs/det.pt", "--out", "OUT", "--save-json",
                      "--save-jsonl", *QUIET],
    "segment-folder": ["segment", "WORLD/inputs/imgs", "--model", "WORLD/inputs/seg.pt", "--out", "OUT",
                       "--save-json", "--save-jsonl", *QUIET],
    "classify-folder": ["classify", "WORLD/inputs/imgs", "--model", "WORLD/inputs/cls.pt", "--out", "OUT",
                        "--save-images", "--save-jsonl", *QUIET],
    "predict-folder": ["predict", "WORLD/inputs/imgs", "--model", "WORLD/inputs/seg.pt", "--out", "OUT",
                       "--save-json", *QUIET],
    "detect-video": ["detect", "WORLD/inputs/shapes.mp4", "--model", "WORLD/inputs/sample_detect.pt", "--out", "OUT",
                     "--vid-stride", "30", "--save-video", "--save-images", "--save-json", "--save-jsonl", "--track",
                     *QUIET],
    "segment-video": ["segment", "WORLD/inputs/shapes.mp4", "--model", "WORLD/inputs/seg.pt", "--out", "OUT",
                      "--vid-stride", "60", "--save-video", "--save-images", "--save-json", "--save-jsonl", *QUIET],
    "train": ["train", str(ROOT / "configs" / "classify_shapes.yaml"), "data.root=WORLD/inputs/data/classify",
              "out=OUT", "train.epochs=1", "data.imgsz=32", "data.workers=0", "train.device=cpu", "--quiet"],
    "train-ultralytics": ["train", str(ROOT / "configs" / "ultralytics_shapes.yaml"), "data.root=WORLD/inputs/data",
                          "model.model=yolov8n.yaml", "out=OUT", "train.epochs=1", "data.imgsz=64", "train.batch=4",
                          "data.workers=0", "train.device=cpu", "--quiet"],
    "val": ["val", "WORLD/inputs/cls.pt", "data.root=WORLD/inputs/data/classify", "train.device=cpu", "--out", "OUT"],
    "export": ["export", "WORLD/inputs/cls.pt", "--out", "OUT/cls.onnx", "--no-check"],
    "synth": ["data", "synth", "OUT", "--train", "1", "--val", "1", "--imgsz", "32", "--video-frames", "2"],
    "convert": ["data", "convert", "WORLD/inputs/data", "--to", "yolo", "--out", "OUT"],
    "merge-json": ["merge-json", "OUT/merged.json", "WORLD/inputs/a.json", "WORLD/inputs/b.json"],
}


# Links a command makes on purpose (the ultralytics mirror links the dataset's images), and commands
# that rebuild a folder of theirs from scratch (so a link planted as that folder is removed, not refused).
OWN_LINKS = {"train-ultralytics": "dataset/images/"}
REBUILDS = {"train-ultralytics"}


def _argv(name: str, world: Path, out: Path) -> list[str]:
    return [a.replace("WORLD", str(world)).replace("OUT", str(out)) if "WORLD" in a or a.startswith(("OUT", "out="))
            else a for a in COMMANDS[name]]


def _written(out: Path) -> tuple[list[str], list[str]]:
    """(files, folders) under ``out`` (relative), walked without following any link."""
    files, folders = [], []
    for folder, dirs, names in os.walk(out, followlinks=False):
        rel = Path(folder).relative_to(out)
        folders += [(rel / d).as_posix() for d in dirs]
        files += [(rel / n).as_posix() for n in names]
    return sorted(files), sorted(folders)


def _sample(files: list[str], per_folder: int = 2) -> list[str]:
    """A few of the names in each folder (synth writes hundreds)."""
    seen: dict[str, int] = {}
    out = []
    for f in files:
        folder = str(Path(f).parent)
        if seen.get(folder, 0) < per_folder:
            seen[folder] = seen.get(folder, 0) + 1
            out.append(f)
    return out


def plant_files(world: Path, out: Path, files: list[str]) -> dict[str, str]:
    """At each name, in turn: a symbolic link to a file outside OUT, a hard link to one, a hard link
    to an input file. Returns the planted names and what they are."""
    planted = {}
    for i, rel in enumerate(_sample(files)):
        target = world / "elsewhere" / f"victim_{i}.txt"
        target.write_text(f"victim {i}")  # (no final newline: a "torn" manifest line, were it read as one)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:
            (out / rel).symlink_to(target)
            planted[rel] = "symlink"
        else:
            os.link(target if i % 3 == 1 else world / "inputs" / "a.json", out / rel)
            planted[rel] = "hardlink"
    return planted


def plant_folders(world: Path, out: Path, folders: list[str], deepest: bool) -> dict[str, str]:
    """Each top-level folder (or each deepest one, its parents kept real) as a symbolic link to a
    folder outside OUT holding a file of its own."""
    chosen = ([f for f in folders if not any(g.startswith(f + "/") for g in folders)] if deepest
              else [f for f in folders if "/" not in f])
    planted = {}
    for i, rel in enumerate(chosen):
        target = world / "elsewhere" / f"dir_{i}"
        target.mkdir()
        (target / "keep.txt").write_text("keep\n")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).symlink_to(target, target_is_directory=True)
        planted[rel] = "dirlink"
    return planted


def _outside(state: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in state.items() if not (k == "out" or k.startswith("out/"))}


def check_boundary(world: Path, out: Path, before: dict[str, str], planted: dict[str, str], rc: int, err: str,
                   expected: list[str], own_links: str | None = None) -> None:
    """The acceptance rule (module doc) after one run of a command over a planted OUT."""
    assert "Traceback" not in err, err[-2000:]
    assert _outside(input_state(world)) == _outside(before), "bytes changed outside OUT or in an input"
    if rc != 0:
        lines = [line for line in err.strip().splitlines() if "%|" not in line]  # (synth's progress bar)
        assert len(lines) == 1 and lines[0].startswith("error:"), err[-2000:]
    files, _ = _written(out)
    for rel in files:
        path = out / rel
        st = os.lstat(path)
        assert not (".tmp" in rel or rel.endswith(".tmp.mp4")), f"temp file left: {rel}"
        if os.path.islink(path):
            assert rel in planted or (own_links and rel.startswith(own_links)), f"the command made a link: {rel}"
        elif planted.get(rel) == "hardlink" and st.st_nlink > 1:
            pass  # left alone (the run refused before it): the digest above shows it unchanged
        else:
            assert st.st_nlink == 1, f"{rel} is a hard link"
    if rc == 0:  # every file it writes is now a fresh regular file inside OUT
        present = set(files)
        for rel in expected:
            if own_links and rel.startswith(own_links):
                continue
            assert rel in present and not os.path.islink(out / rel) and os.lstat(out / rel).st_nlink == 1, rel


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_links_planted_in_out_never_redirect_a_write(name: str, assets: Path, tmp_path: Path, capsys) -> None:
    probe_world = _world(tmp_path / "probe", assets)
    rc, err = _run(_argv(name, probe_world, probe_world / "out"), capsys)
    assert rc == 0, err
    files, folders = _written(probe_world / "out")
    assert files, f"{name} wrote nothing"
    variants: list[tuple[str, Callable[[Path, Path], dict[str, str]]]] = [
        ("files", lambda w, o: plant_files(w, o, files))]
    if folders:
        variants.append(("folders", lambda w, o: plant_folders(w, o, folders, deepest=False)))
        if any("/" in f for f in folders):
            variants.append(("nested", lambda w, o: plant_folders(w, o, folders, deepest=True)))
    for variant, plant in variants:
        world = _world(tmp_path / variant, assets)
        out = world / "out"
        planted = plant(world, out)
        before = input_state(world)
        rc, err = _run(_argv(name, world, out), capsys)
        check_boundary(world, out, before, planted, rc, err, files, OWN_LINKS.get(name))
        if variant != "files" and name not in REBUILDS:  # a write into a linked folder can only be refused
            assert rc == 1 and "symbolic link" in err, (variant, err)


@pytest.mark.parametrize("kind", ["symlink", "hardlink-to-input"])
def test_ray_manifest_planted_as_a_link_is_refused(kind: str, assets: Path, tmp_path: Path, capsys) -> None:
    """Points 2 and 3: the manifest is never opened through a link (it was found "torn" and cut)."""
    pytest.importorskip("ray")
    world = _world(tmp_path, assets)
    out, victim = world / "out", world / "elsewhere" / "victim.txt"
    # no final newline: read as a manifest, each is one "torn" line, which used to be cut off
    victim.write_text("precious")
    (world / "inputs" / "list.txt").write_text(str(world / "inputs" / "imgs" / "a.jpg"))
    if kind == "symlink":
        (out / "ray_manifest.jsonl").symlink_to(victim)
    else:  # the source list itself, under the manifest's name
        os.link(world / "inputs" / "list.txt", out / "ray_manifest.jsonl")
    before = input_state(world)
    rc, err = _run(["detect", str(world / "inputs" / "list.txt"), "--model", str(world / "inputs" / "det.pt"),
                    "--out", str(out), "--ray", *QUIET], capsys)
    assert rc == 1, err
    check_boundary(world, out, before, {"ray_manifest.jsonl": kind.split("-")[0]}, rc, err, [])
    assert input_state(world)["out/ray_manifest.jsonl"] == before["out/ray_manifest.jsonl"]


# ------------------------------------------------------------------ point 5: OUT inside the dataset
def test_train_out_inside_the_dataset_is_refused(assets: Path, tmp_path: Path, capsys) -> None:
    world = _world(tmp_path, assets)
    data = world / "inputs" / "data" / "classify"
    before = input_state(world)
    for out in (data / "train" / "circle", data):
        rc, err = _run(["train", str(ROOT / "configs" / "classify_shapes.yaml"), f"data.root={data}", f"out={out}",
                        "train.epochs=1", "data.imgsz=32", "data.workers=0", "train.device=cpu", "--quiet"], capsys)
        assert rc == 1 and err.count("\n") == 1 and "inside the input folder" in err, err
    # nor the folder holding the weights it starts from (best.pt would replace them)
    rc, err = _run(["train", str(ROOT / "configs" / "classify_shapes.yaml"), f"data.root={data}",
                    f"out={world / 'inputs'}", f"model.weights={world / 'inputs' / 'cls.pt'}", "train.epochs=1",
                    "data.imgsz=32", "data.workers=0", "train.device=cpu", "--quiet"], capsys)
    assert rc == 1 and err.count("\n") == 1 and "holds the input" in err, err
    assert input_state(world) == before


def test_val_out_inside_the_dataset_is_refused(assets: Path, tmp_path: Path, capsys) -> None:
    world = _world(tmp_path, assets)
    data = world / "inputs" / "data"
    before = input_state(world)
    for model, root, out in ((world / "inputs" / "det.pt", data, data / "images" / "val"),
                             (world / "inputs" / "cls.pt", data / "classify", data / "classify" / "val" / "circle")):
        rc, err = _run(["val", str(model), f"data.root={root}", "train.device=cpu", "--out", str(out)], capsys)
        assert rc == 1 and err.count("\n") == 1 and "inside the input folder" in err, err
    assert input_state(world) == before
    # the default --out (the model's folder) still works; the model is not replaced
    rc, err = _run(["val", str(world / "inputs" / "cls.pt"), f"data.root={data / 'classify'}", "train.device=cpu"],
                   capsys)
    assert rc == 0, err
    assert input_state(world)["inputs/cls.pt"] == before["inputs/cls.pt"]


def test_an_out_refused_as_an_input_folder_gets_no_temp_file(assets: Path, tmp_path: Path, capsys) -> None:
    world = _world(tmp_path, assets)
    imgs = world / "inputs" / "imgs"
    before = input_state(world)
    rc, err = _run(["detect", str(imgs), "--model", str(world / "inputs" / "det.pt"), "--out", str(imgs / "sub"),
                    "--save-jsonl", "--save-json", "--save-video", *QUIET], capsys)
    assert rc == 1 and err.count("\n") == 1 and "inside the input folder" in err, err
    assert input_state(world) == before


# ------------------------------------------------------------------ dangling --out, synth bounds
def test_dangling_out_link_is_one_clear_line(assets: Path, tmp_path: Path, capsys) -> None:
    world = _world(tmp_path, assets)
    link = world / "dangling"
    link.symlink_to(world / "nowhere")
    for argv in (["detect", str(world / "inputs" / "imgs" / "a.jpg"), "--model", str(world / "inputs" / "det.pt"),
                  "--out", str(link), *QUIET],
                 ["data", "synth", str(link), "--train", "1", "--val", "0", "--video-frames", "1"],
                 ["train", str(ROOT / "configs" / "classify_shapes.yaml"), f"data.root={world / 'inputs' / 'data'}",
                  f"out={link}", "--quiet"]):
        rc, err = _run(argv, capsys)
        assert rc == 1 and err.count("\n") == 1 and "symbolic link to" in err and "does not exist" in err, err
    assert not (world / "nowhere").exists()


@pytest.mark.parametrize("args,word", [(["--imgsz", "100000"], "imgsz"), (["--seed", "-1"], "seed"),
                                       (["--video-frames", "10000000"], "video frames")])
def test_synth_bounds_are_checked_up_front(args: list[str], word: str, tmp_path: Path, capsys) -> None:
    rc, err = _run(["data", "synth", str(tmp_path / "s"), *args], capsys)
    assert rc == 1 and err.count("\n") == 1 and word in err, err
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ signals and file-size limits
def _temps(folder: Path) -> list[str]:
    return [p for p in _written(folder)[0] if Path(p).name.startswith(".") or ".tmp" in p]


def test_sigterm_during_synth_leaves_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "cvapps", "data", "synth", str(out), "--train", "1", "--val", "0",
                             "--imgsz", "32", "--video-frames", "200000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while not any(".mp4" in p for p in _temps(out)) if out.exists() else True:
            assert proc.poll() is None and time.monotonic() < deadline, "the video was never started"
            time.sleep(0.1)
        time.sleep(0.5)  # well into the video
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert _temps(out) == [] and not (out / "video" / "shapes.mp4").exists()


def test_file_size_limit_while_writing_json_lines(tmp_path: Path) -> None:
    """``ulimit -f``: one line, no temp file, no empty tracks/, and what OUT held before is kept whole."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text("previous\n")
    limit = 6000  # over the first JSON lines, far under the run's

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    proc = subprocess.run([sys.executable, "-m", "cvapps", "detect", str(SAMPLE / "shapes" / "video" / "shapes.mp4"),
                           "--model", str(SAMPLE / "models" / "detect.pt"), "--out", str(out), "--save-jsonl",
                           "--track", "--vid-stride", "2", *QUIET], preexec_fn=cap, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert "File too large" in proc.stderr or "file too large" in proc.stderr, proc.stderr
    assert sorted(os.listdir(out)) == ["predictions.jsonl"], os.listdir(out)  # no temp, no empty tracks/
    assert (out / "predictions.jsonl").read_text() == "previous\n"


# ------------------------------------------------------------------ manifest records that do not hold
def _manifest_item(tmp_path: Path) -> tuple[object, Path, dict]:
    import cv2

    from cvapps.engine.manifest import encode_prediction
    from cvapps.engine.ray_plan import Item
    from cvapps.structures import Detections, Prediction

    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((12, 16, 3), np.uint8))
    det = Detections(np.array([[1, 2, 3, 4]], np.float32), np.array([0.5], np.float32), np.array([1]),
                     np.ones((1, 12, 16), bool))
    frame = {"source": str(img), "index": 0, "timestamp": 0.0, "width": 16, "height": 12,
             "prediction": encode_prediction(Prediction(det), ["a", "b", "c"])}
    return Item(str(img), 0, "image", str(img)), img, {"key": str(img), "frames": [frame]}


def _bad_records(good: dict) -> dict[str, bytes]:
    frame = good["frames"][0]
    pred = frame["prediction"]
    huge = {**good, "frames": [{**frame, "width": 60000, "height": 60000,
                                "prediction": {**pred, "mask_size": [60000, 60000],
                                               "masks": [{"size": [60000, 60000], "counts": "0"}]}}]}
    mask_only = {**good, "frames": [{**frame, "prediction": {**pred, "mask_size": [60000, 60000]}}]}
    from cvapps.formats.coco_encode import mask_to_rle

    runs = mask_to_rle(np.ones((24, 32), bool))["counts"]  # run lengths of a mask 4 times as big
    overrun = {**good, "frames": [{**frame, "prediction": {**pred, "masks": [{"size": [12, 16], "counts": runs}]}}]}
    cls = {**good, "frames": [{**frame, "prediction": {"label": 1, "name": "b", "score": 0.5, "topk": 5}}]}
    label = {**good, "frames": [{**frame, "prediction": {**pred, "labels": [99]}}]}
    deep = b'{"key": "' + good["key"].encode() + b'", "frames": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    return {"huge": json.dumps(huge).encode(), "mask-size": json.dumps(mask_only).encode(),
            "rle-overrun": json.dumps(overrun).encode(), "topk-int": json.dumps(cls).encode(),
            "frames-int": json.dumps({"key": good["key"], "frames": 7}).encode(),
            "label-past-classes": json.dumps(label).encode(), "deep": deep,
            "long": json.dumps({**good, "pad": "x" * 5000}).encode(), "not-json": b'{"key": ' + json.dumps(good["key"]).encode() + b', "frames": [{'}


@pytest.mark.parametrize("case", list(_bad_records({"key": "k", "frames": [{"prediction": {}}]})))
def test_manifest_record_that_does_not_hold_is_predicted_again(case: str, tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    import cvapps.engine.manifest as manifest_module
    from cvapps.engine.manifest import Manifest
    from cvapps.engine.manifest_check import RecordCheck

    if case == "long":
        monkeypatch.setattr(manifest_module, "MAX_LINE_BYTES", 4096)
    item, _, good = _manifest_item(tmp_path)
    path = tmp_path / "ray_manifest.jsonl"
    header = json.dumps({"cvapps_manifest": 1, "run": {"source": "s"}}).encode()
    path.write_bytes(header + b"\n" + _bad_records(good)[case] + b"\n")
    with Manifest(path, {"source": "s"}, RecordCheck([item], classes=3)) as m:
        assert item.key not in m.done  # its item is predicted again
        m.append(good)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning:") and "predicted again" in err, err
    with Manifest(path, {"source": "s"}, RecordCheck([item], classes=3)) as m:  # the later good record wins
        assert m.done[item.key] == good
    assert capsys.readouterr().err == ""


def test_a_good_manifest_record_passes_the_check(tmp_path: Path) -> None:
    from cvapps.engine.manifest import decode_prediction
    from cvapps.engine.manifest_check import RecordCheck, rle_fits

    item, _, good = _manifest_item(tmp_path)
    assert RecordCheck([item], classes=3)(json.loads(json.dumps(good))) is None
    decoded = decode_prediction(good["frames"][0]["prediction"])
    assert decoded.detections.masks.shape == (1, 12, 16)
    assert not rle_fits({"size": [12, 16], "counts": "0"}, 12, 16)  # runs short of the mask
    assert rle_fits(good["frames"][0]["prediction"]["masks"][0], 12, 16)
