"""The public Python API: cvapps.load / Model.predict / Result / cvapps.train (the README's example runs in
test_docs.py)."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_checkpoints import ROOT, SHAPES, make_checkpoint

import cvapps
from cvapps.cli import main as cli
from cvapps.errors import CvappsError
from cvapps.results import Result
from cvapps.structures import Classification, Detections, Prediction, SegmentationMask

VAL_IMAGES = ROOT / "sample_data" / "shapes" / "images" / "val"

def _tiny_yolo(path: Path, imgsz: int = 64) -> Path:
    """A random tiny YOLO checkpoint whose class-score biases are 0, so it finds boxes at score ~0.5."""
    make_checkpoint(path, "yolo_shapes.yaml", [f"data.imgsz={imgsz}"], SHAPES, [1, 2, 3])
    raw = torch.load(path, weights_only=True)
    for key, value in raw["model"].items():
        if ".cv3." in key and key.endswith(".2.bias"):
            value.zero_()
    torch.save(raw, path)
    return path


@pytest.fixture(scope="module")
def yolo_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_yolo(tmp_path_factory.mktemp("api") / "yolo.pt")


@pytest.fixture(scope="module")
def cls_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("api") / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)


DET_OPTIONS = {"conf": 0.3, "iou": 0.5, "max_det": 20}


def test_model_surface(yolo_ckpt: Path) -> None:
    model = cvapps.load(yolo_ckpt, device="cpu")
    assert isinstance(model, cvapps.Model) and model.task == "yolo" and model.names == SHAPES
    assert model.category_ids == [1, 2, 3]
    with pytest.raises(CvappsError, match="checkpoint not found"):
        cvapps.load(yolo_ckpt.parent / "missing.pt")
    with pytest.raises(CvappsError, match="source not found"):
        model.predict(str(yolo_ckpt.parent / "nothing_here"))  # fails at the call, even with stream=True
    with pytest.raises(CvappsError, match="unknown format"):
        model.export("tflite")


def test_predict_arrays_equal_predict_files(yolo_ckpt: Path) -> None:
    model = cvapps.load(yolo_ckpt, device="cpu")
    files = sorted(VAL_IMAGES.glob("*.jpg"))[:2]
    arrays = [cv2.imread(str(p)) for p in files]
    from_files = model.predict([str(p) for p in files], **DET_OPTIONS)
    from_arrays = model(arrays, **DET_OPTIONS)
    single = model.predict(arrays[1], **DET_OPTIONS)
    assert [r.index for r in from_arrays] == [0, 1] and from_arrays[0].source == "<array>"
    # batch of 1 vs batch of 2: the same maths, but CPU kernels may round the last bits differently
    assert len(single) == 1 and np.allclose(single[0].boxes, from_arrays[1].boxes, atol=1e-3)
    for a, f in zip(from_arrays, from_files):
        assert a.prediction.detections is not None and len(a.boxes) > 0
        assert np.array_equal(a.boxes, f.boxes) and np.array_equal(a.scores, f.scores)
        assert np.array_equal(a.labels, f.labels) and a.image.shape == f.image.shape
    gray = model.predict(cv2.cvtColor(arrays[0], cv2.COLOR_BGR2GRAY))[0]
    assert gray.image.shape == arrays[0].shape
    with pytest.raises(CvappsError, match="HxWx3 BGR uint8"):
        model.predict(np.zeros((8, 8, 3), np.float32))
    plotted = from_arrays[0].plot()
    assert plotted.shape == arrays[0].shape and not np.array_equal(plotted, arrays[0])
    record = json.loads(from_arrays[0].to_json())
    assert record["boxes"] == from_arrays[0].boxes.tolist() and set(record["names"]) <= set(SHAPES)


def test_to_coco_equals_cli_save_json(yolo_ckpt: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    out = tmp_path / "detect"
    assert cli(["detect", str(VAL_IMAGES), "--model", str(yolo_ckpt), "--out", str(out), "--device", "cpu",
                "--conf", str(DET_OPTIONS["conf"]), "--iou", str(DET_OPTIONS["iou"]),
                "--max-det", str(DET_OPTIONS["max_det"]), "--save-json", "--no-images", "--quiet"]) == 0
    cli_results = json.loads((out / "predictions.json").read_text())
    dataset = json.loads((out / "predictions_coco.json").read_text())
    ids = {im["file_name"]: im["id"] for im in dataset["images"]}
    model = cvapps.load(yolo_ckpt, device="cpu")
    api_results = []
    for r in model.predict(str(VAL_IMAGES), stream=True, **DET_OPTIONS):
        api_results += r.to_coco(ids[Path(r.source).relative_to(VAL_IMAGES).as_posix()])
    assert len(api_results) > 0
    def key(entry: dict) -> str:
        return json.dumps(entry, sort_keys=True)

    assert sorted(map(key, api_results)) == sorted(map(key, cli_results))
    gt = COCO()
    gt.dataset = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
    gt.createIndex()
    loaded = gt.loadRes(api_results)
    assert len(loaded.getAnnIds()) == len(api_results)


def test_to_supervision_round_trips_exactly(yolo_ckpt: Path) -> None:
    sv = pytest.importorskip("supervision")
    model = cvapps.load(yolo_ckpt, device="cpu")
    r = model.predict(str(min(VAL_IMAGES.glob("*.jpg"))), **DET_OPTIONS)[0]
    dets = r.to_supervision()
    assert isinstance(dets, sv.Detections) and len(dets) == len(r.boxes) > 0
    assert np.array_equal(dets.xyxy, r.boxes) and np.array_equal(dets.confidence, r.scores)
    assert np.array_equal(dets.class_id, r.labels)
    assert list(dets.data["class_name"]) == [SHAPES[k] for k in r.labels]

    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 3:9], mask[10:12, 20:25], mask[0, 0] = 2, 3, 255
    semantic = Prediction(semantic=SegmentationMask(mask, np.array([0, .1, .2, .3])))
    seg = Result("m.png", 0, 0.0, np.zeros((20, 30, 3), np.uint8), semantic, ["background", *SHAPES], [0, 1, 2, 3])
    sdets = seg.to_supervision()
    assert sdets.class_id.tolist() == [2, 3] and np.allclose(sdets.confidence, [0.2, 0.3])
    assert np.array_equal(sdets.mask[0], mask == 2) and sdets.xyxy[0].tolist() == [3, 2, 8, 5]
    assert [e["category_id"] for e in seg.to_coco(7)] == [2, 3]
    cls = Result("c.png", 0, 0.0, np.zeros((4, 4, 3), np.uint8), Prediction(classification=Classification(1, 0.75)), SHAPES)
    assert cls.to_supervision().class_id.tolist() == [1] and cls.label == 1 and cls.score == 0.75
    with pytest.raises(CvappsError, match="no COCO results form"):
        cls.to_coco(1)
    with pytest.raises(CvappsError, match="only for Detections"):
        _ = cls.boxes


def test_to_supervision_without_supervision_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "supervision", None)  # makes `import supervision` raise ImportError
    r = Result("a.png", 0, 0.0, np.zeros((4, 4, 3), np.uint8), Prediction(Detections.empty()), SHAPES)
    with pytest.raises(CvappsError) as info:
        r.to_supervision()
    assert "pip install 'cvapps[supervision]'" in str(info.value) and "\n" not in str(info.value)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_stream_keeps_memory_flat_on_a_long_video(cls_ckpt: Path, tmp_path: Path) -> None:
    # 600 frames of 256x192: holding them all (a list, not a generator) would take 88 MB.
    video = tmp_path / "long.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30, (256, 192))
    ramp = np.tile(np.arange(256, dtype=np.uint8), (192, 1))
    for i in range(600):
        writer.write(cv2.merge([ramp, np.roll(ramp, i, axis=1), np.full_like(ramp, i % 256)]))
    writer.release()
    model = cvapps.load(cls_ckpt, device="cpu")
    model.predict(np.zeros((192, 256, 3), np.uint8))  # warm-up: first-forward allocations are not the stream's
    rss, count = {0: _rss_mb()}, 0
    results = model.predict(str(video), stream=True)
    assert inspect.isgenerator(results)
    for r in results:
        count += 1
        assert r.index == count - 1 and r.prediction.classification is not None
        if count in (100, 600):
            rss[count] = _rss_mb()
    assert count == 600
    # flat: the bounded read-ahead queues fill by frame 100, then nothing grows (a list would add 88 MB)
    assert rss[600] - rss[100] < 30 and rss[600] - rss[0] < 50, rss
    print("RSS MB at start, frame 100, frame 600:", rss)


def test_train_overrides_and_val(tmp_path: Path) -> None:
    from cvapps.api import overrides_list

    assert overrides_list({"train.epochs": 1}, data__root=tmp_path, out="x") == [
        "train.epochs=1", f'data.root="{tmp_path}"', 'out="x"']
    run = cvapps.train(ROOT / "configs" / "classify_shapes.yaml", progress=False, data__root=ROOT / "sample_data" /
                       "shapes" / "classify", out=tmp_path / "run", train__epochs=1, data__imgsz=32, train__device="cpu")
    assert run.best.is_file() and len(run.history) == 1
    model = cvapps.load(run.best, device="cpu")
    metrics = model.val()  # the dataset it was trained on, on the device it was loaded on
    assert 0.0 <= metrics["accuracy"] <= 1.0
    other = model.val(data=ROOT / "sample_data" / "shapes" / "classify", out_dir=tmp_path / "val")
    assert other == metrics and json.loads((tmp_path / "val" / "val_metrics.json").read_text()) == metrics
    with pytest.raises(CvappsError, match="not_a_key"):
        model.val(data__not_a_key=1)


def test_export_then_load_onnx_predicts_the_same(cls_ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = cvapps.load(cls_ckpt, device="cpu")
    onnx_path = model.export(out=tmp_path / "cls.onnx")
    assert onnx_path == tmp_path / "cls.onnx" and onnx_path.is_file()
    onnx_model = cvapps.load(onnx_path, device="cpu")
    assert onnx_model.task == "classify" and onnx_model.names == model.names
    folder = ROOT / "sample_data" / "shapes" / "classify" / "val"
    a, b = model.predict(str(folder)), onnx_model.predict(str(folder))
    assert len(a) == len(b) > 0 and [r.label for r in a] == [r.label for r in b]
    with pytest.raises(CvappsError, match="already an ONNX file"):
        onnx_model.export()


def test_native_ultralytics_model(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    model = cvapps.load("yolov8n.yaml", device="cpu", imgsz=64)
    assert model.task == "ultralytics" and len(model.names) == 80
    r = model.predict(np.full((40, 90, 3), 100, np.uint8), conf=0.0, max_det=5)[0]
    assert r.boxes.shape == (5, 4) and float(r.boxes[:, 2].max()) <= 90
    assert {e["category_id"] for e in r.to_coco(1)} <= set(model.category_ids)


def test_breaking_out_of_a_stream_stops_its_threads(cls_ckpt: Path) -> None:
    import threading
    import time

    model = cvapps.load(cls_ckpt, device="cpu", batch=2)
    results = model.predict(str(ROOT / "sample_data" / "shapes" / "video" / "shapes.mp4"), stream=True)
    first = [next(results) for _ in range(3)]
    assert [r.index for r in first] == [0, 1, 2] and first[2].timestamp > 0
    results.close()
    deadline = time.monotonic() + 10
    while any(t.name.startswith("cvapps-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("cvapps-")]
