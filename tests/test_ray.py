"""Batch prediction on Ray Data (cvapps.engine.ray_predict): same outputs as one process, resumable.

One local Ray instance (2 CPUs) is shared by the module's tests and shut down at the end; the
killed-driver test joins it from a subprocess by its address, so killing that driver leaves no
orphaned Ray processes behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from cvapps.api import load
from cvapps.engine.manifest import Manifest, decode_prediction, encode_prediction
from cvapps.engine.ray_plan import plan_items
from cvapps.engine.ray_predict import MANIFEST, RayCluster, RayModel, run_ray
from cvapps.errors import CvappsError
from cvapps.formats.coco import ImageIndex
from cvapps.io.sinks import CocoSink, JsonLinesSink, close_all
from cvapps.io.sources import SourceOptions, open_source

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "sample_data" / "models" / "detect.pt"
IMAGES = REPO / "sample_data" / "shapes" / "images" / "val"
VIDEO = REPO / "sample_data" / "shapes" / "video" / "shapes.mp4"
OPTIONS = {"conf": 0.25, "iou": 0.5, "max_det": 300}


@pytest.fixture(scope="module")
def ray_session():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A list file: 12 images (one of them broken) and the sample video (240 frames)."""
    root = tmp_path_factory.mktemp("ray_inputs")
    folder = root / "images"
    folder.mkdir()
    for path in sorted(IMAGES.glob("*.jpg"))[:12]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    shutil.copy(VIDEO, root / "clip.mp4")
    listing = root / "inputs.txt"
    listing.write_text("images\nclip.mp4\n")
    return listing


def _sinks(predictor, out: Path, jsonl: bool = True):
    """What `cvapps detect LIST --save-json [--save-jsonl]` writes."""
    coco = CocoSink(out / "predictions_coco.json", predictor.class_names, predictor.category_ids,
                    results_path=out / "predictions.json", index=ImageIndex(None, None))
    return [coco, JsonLinesSink(out / "predictions.jsonl", predictor.class_names)] if jsonl else [coco]


def _single_process(predictor, listing: Path, out: Path) -> dict:
    """The reference: the images of the list, then the video, through one predictor into one set of sinks."""
    root = listing.parent
    images = sorted(str(p) for p in (root / "images").glob("*.jpg"))

    def frames():
        with open_source(images) as a:
            yield from a
        with open_source(str(root / "clip.mp4")) as b:
            yield from b

    sinks = _sinks(predictor, out)
    for frame, prediction in predictor.predict(frames(), **OPTIONS):
        for sink in sinks:
            sink.write(frame, prediction)
    assert close_all(sinks) == []
    return json.loads((out / "predictions_coco.json").read_text())


def _by_file(doc: dict) -> dict:
    """file_name -> (image id, sorted annotations without their running id)."""
    anns: dict[int, list] = {}
    for a in doc["annotations"]:
        anns.setdefault(a["image_id"], []).append((a["category_id"], a["bbox"], a["score"]))
    return {im["file_name"]: (im["id"], sorted(anns.get(im["id"], []))) for im in doc["images"]}


def _close(a: list, b: list) -> bool:
    """Annotation lists equal up to float noise: Ray batches frames differently from one process,
    and a batch's composition moves scores in the 6th digit (the files round to 5)."""
    return len(a) == len(b) and all(
        ca == cb and all(abs(x - y) <= 0.02 for x, y in zip(ba, bb)) and abs(sa - sb) <= 2e-5
        for (ca, ba, sa), (cb, bb, sb) in zip(a, b))


def _assert_same_outputs(out: Path, reference: Path) -> None:
    """Same image ids per file name, same annotations (classes, boxes, scores) per image, in every file."""
    got = json.loads((out / "predictions_coco.json").read_text())
    want = json.loads((reference / "predictions_coco.json").read_text())
    g, w = _by_file(got), _by_file(want)
    assert g.keys() == w.keys()
    for name in w:
        assert g[name][0] == w[name][0], name  # same image id
        assert _close(g[name][1], w[name][1]), name
    assert [a["id"] for a in got["annotations"]] == [a["id"] for a in want["annotations"]]
    results = [json.loads((d / "predictions.json").read_text()) for d in (out, reference)]
    assert [(r["image_id"], r["category_id"]) for r in results[0]] == [(r["image_id"], r["category_id"]) for r in results[1]]
    if not (out / "predictions.jsonl").exists():
        return
    lines = [(d / "predictions.jsonl").read_text().splitlines() for d in (out, reference)]
    assert [json.loads(x)["source"] for x in lines[0]] == [json.loads(x)["source"] for x in lines[1]]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    """Outputs of the single-process run over ``inputs``."""
    out = tmp_path_factory.mktemp("single")
    _single_process(load(MODEL, device="cpu").predictor, inputs, out)
    return out


def test_ray_matches_single_process(ray_session, inputs, reference, tmp_path):
    out = tmp_path / "ray"
    # the API of `cvapps detect LIST --ray --ray-actors 2 --save-jsonl`: the same sinks as _sinks
    report = load(MODEL, device="cpu").predict_ray(str(inputs), out, actors=2, save_jsonl=True, **OPTIONS)
    got = json.loads((out / "predictions_coco.json").read_text())
    assert report.processed == 12 + 240 and report.predicted == 12 + 240 and report.resumed == 0
    assert [Path(p).name for p, _ in report.skipped] == ["broken.jpg"]
    assert len(got["images"]) == 252 and len(got["annotations"]) > 252
    _assert_same_outputs(out, reference)


def _keys(manifest: Path) -> list[str]:
    lines = manifest.read_bytes().split(b"\n")[1:-1]  # after the header, whole lines (not a torn tail)
    return [json.loads(line)["key"] for line in lines]


def test_killed_driver_resumes_only_missing_items(ray_session, inputs, reference, tmp_path):
    out = tmp_path / "killed"
    manifest = out / MANIFEST
    # `cvapps detect LIST --ray ADDRESS`: joins this module's Ray instance, so no Ray process of its own dies with it
    cli = [sys.executable, "-m", "cvapps", "detect", str(inputs), "--model", str(MODEL), "--out", str(out),
           "--ray", ray_session, "--ray-actors", "1", "--device", "cpu", "--batch", "4", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and len(_keys(manifest)) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run, with no cleanup of its own
    _, stderr = proc.communicate(timeout=30)
    before = _keys(manifest)
    all_keys = [item.key for item in plan_items(str(inputs))[0]]  # the CLI's default video chunk
    assert 3 <= len(before) < len(all_keys), f"the run was not killed partway: {stderr.decode()[-2000:]}"
    assert not (out / "predictions_coco.json").exists()  # outputs appear only once everything is done
    with open(manifest, "ab") as fh:  # as if killed in the middle of writing a line
        fh.write(b'{"key": "torn')
    # the rerun: the same run as the CLI's (source text, model, detect's default options), through the API
    predictor = load(MODEL, device="cpu").predictor
    report = run_ray(RayModel(str(MODEL), OPTIONS, batch=4, device="cpu"), str(inputs),
                     _sinks(predictor, out, jsonl=False), out, RayCluster(actors=1), progress=False)
    after = _keys(manifest)
    assert after[:len(before)] == before  # the earlier records are kept as they were
    new = after[len(before):]
    assert sorted(new) == sorted(set(all_keys) - set(before))  # only the missing items were predicted
    assert report.resumed == len(before) and report.processed == 252 > report.predicted
    _assert_same_outputs(out, reference)  # = the uninterrupted (single-process) run's


def test_manifest_torn_line_and_other_run(tmp_path):
    path = tmp_path / MANIFEST
    with Manifest(path, {"source": "a"}) as m:
        m.append({"key": "x", "frames": []})
    path.write_bytes(path.read_bytes() + b'{"key": "y", "fr')  # torn tail
    with Manifest(path, {"source": "a"}) as m:
        assert list(m.done) == ["x"]
        m.append({"key": "z", "skipped": "bad"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()[1:]] == ["x", "z"]
    with pytest.raises(CvappsError, match="another run"):
        Manifest(path, {"source": "b"}).open()


def test_encoded_predictions_round_trip():
    """Each part alone and several together come back equal (tests/test_prediction.py: every field)."""
    import numpy as np
    import torch

    from cvapps.structures import (
        Classification,
        Detections,
        Prediction,
        Presence,
        SegmentationMask,
    )

    det = Detections(np.array([[1.123456, 2.5, 30.0001, 40.7]], np.float32), np.array([0.912345678], np.float32),
                     np.array([2]), np.ones((1, 4, 5), bool))
    mask = SegmentationMask(np.array([[0, 1], [2, 255]], np.uint8), np.array([0.5, 0.25, 0.125], np.float32))
    cls = Classification(1, 0.75, [(1, 0.75), (0, 0.25)])
    both = Prediction(det, mask, presence=Presence(torch.tensor([0, 2]), np.array([0.9, 0.1, 0.8], np.float32)))
    for pred in (Prediction(det), Prediction(semantic=mask), Prediction(classification=cls), both):
        back = decode_prediction(json.loads(json.dumps(encode_prediction(pred, ["a", "b", "c"]))))
        assert back == pred and back.parts().keys() == pred.parts().keys()
    assert back.detections.boxes.equal(det.boxes) and back.semantic.mask.dtype == np.uint8
    assert back.presence.labels.tolist() == [0, 2] and back.classification is None


def test_plan_refuses_streams_and_splits_videos(inputs):
    with pytest.raises(CvappsError, match="not live streams"):
        plan_items("rtsp://camera/1")
    items, _ = plan_items(str(inputs), chunk=100)
    videos = [(it.start, it.end) for it in items if it.kind == "video"]
    assert videos == [(0, 100), (100, 200), (200, -1)]
    assert [Path(it.path).name for it in items if it.kind == "image"][-1] == "shapes_000011.jpg"


def test_cli_ray_errors_are_one_line(inputs, tmp_path, monkeypatch, capsys):
    from cvapps.cli import main

    base = ["detect", str(inputs), "--model", str(MODEL), "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"]
    assert main([*base, "--ray", "--save-images"]) != 0
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --ray writes JSON/CSV outputs only: drop --save-images (or run without --ray)"]
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main([*base, "--ray"]) != 0
    assert capsys.readouterr().err.strip().splitlines() == ['error: --ray needs Ray Data: pip install "cvapps[ray]"']


def test_video_range_equals_the_video_source():
    """A frame range read after a seek (with a stride) = the same frames of a VideoSource read from the start."""
    import numpy as np

    from cvapps.engine.ray_read import video_frames

    with open_source(str(VIDEO), SourceOptions(vid_stride=3)) as src:
        want = [(f.source, f.index, f.timestamp, f.image) for f in src if 100 <= f.index < 160]
    got = list(video_frames(str(VIDEO), 100, 160, vid_stride=3))
    assert [g[:3] for g in got] == [w[:3] for w in want] and len(got) == 20
    assert all(np.array_equal(g[3], w[3]) for g, w in zip(got, want))


def test_multitask_model_whole_and_as_its_parts(ray_session, inputs, tmp_path):
    """`cvapps predict --ray` on a multitask model writes its boxes and masks under each frame's one
    image id, as the single-process run does; `cvapps segment --ray` takes its masks only."""
    from tiny_checkpoints import multitask_checkpoint

    from cvapps.cli import main
    from cvapps.tasks import load_config

    cfg = load_config(REPO / "configs" / "multitask_shapes.yaml", ["data.root=unused", "data.imgsz=64",
                                                                    "train.device=cpu"])
    ckpt = multitask_checkpoint(tmp_path / "mt.pt", cfg, 2)  # its mask says "square" everywhere
    images = inputs.parent / "images"
    # random weights score every box near 0.001; the top one per image stands clear of the rest, so
    # Ray's other batching (float noise) cannot reorder what is kept
    for command, options in (("predict", ["--conf", "0", "--max-det", "1"]), ("segment", [])):
        base = [command, str(images), "--model", str(ckpt), "--save-json", "--device", "cpu", "--quiet", *options]
        assert main([*base, "--out", str(tmp_path / command)]) == 0
        assert main([*base, "--out", str(tmp_path / f"{command}_ray"), "--ray"]) == 0
        want = json.loads((tmp_path / command / "predictions_coco.json").read_text())
        got = json.loads((tmp_path / f"{command}_ray" / "predictions_coco.json").read_text())
        assert [im["file_name"] for im in got["images"]] == [im["file_name"] for im in want["images"]]
        assert len(got["images"]) == 12  # the broken file is skipped by both
        by_image = {}
        for doc in (got, want):
            for a in doc["annotations"]:
                by_image.setdefault(a["image_id"], ([], []))[doc is want].append(a)
        for image_id, (g, w) in by_image.items():
            boxes = [[(a["category_id"], a["bbox"], a["score"]) for a in x if "segmentation" not in a] for x in (g, w)]
            masks = [[(a["category_id"], a["segmentation"]) for a in x if "segmentation" in a] for x in (g, w)]
            assert _close(sorted(boxes[0]), sorted(boxes[1])), image_id
            assert masks[0] == masks[1] and [c for c, _ in masks[0]] == [2], image_id
            assert len(boxes[0]) == (1 if command == "predict" else 0)  # segment: the masks only


def test_actor_leaves_no_model_copy_in_the_temp_folder(monkeypatch, tmp_path):
    """An actor writes the model's bytes to a private temp copy for the loader and removes it once the
    model is loaded (Ray ends actors without running __del__, so a later cleanup would never run)."""
    import tempfile

    import numpy as np

    from cvapps.engine.ray_workers import PredictActor

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(ray, "get", lambda ref: ref)  # the object ref stands for the bytes themselves
    actor = PredictActor([MODEL.read_bytes()], str(MODEL), device="cpu")
    assert list(tmp_path.iterdir()) == []
    frame = next(iter(open_source(str(next(IMAGES.glob("*.jpg"))))))
    want = load(str(MODEL), device="cpu").predict(frame.image, **OPTIONS)[0].boxes
    got = list(actor.predictor.predict([frame], **OPTIONS))[0][1].detections.boxes.numpy()
    assert len(want) > 0 and np.allclose(got, want, atol=1e-3)
