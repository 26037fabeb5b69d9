"""YOLO on the shared backbone and native ultralytics models (issue 5).

Covers the ultralytics glue (head + loss train, NMS), exact letterbox round trips on non-square
images, native models' outputs as our Detections, `cvapps detect --model yolov8n.yaml`, the
offline error for missing weights and the COCO -> YOLO mirror used by ultralytics' trainer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cvapps.config import validate
from cvapps.structures import Detections
from cvapps.tasks.yolo import TASK as YOLO_TASK
from cvapps.tasks.yolo import YoloConfig


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one intra-op thread is faster, and far faster on a loaded CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from cvapps.data.synth import SynthSpec, generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("shapes") / "shapes", SynthSpec(n_train=8, n_val=4, imgsz=64,
                           n_crops_per_class=(1, 1), video_frames=1), progress=False)


def _yolo_cfg(root: Path, **model) -> YoloConfig:
    return validate(YoloConfig, {"task": "yolo", "model": {"arch": "yolo", "neck_width": 16, **model},
                                 "data": {"root": str(root), "imgsz": 64, "workers": 0},
                                 "augment": {"train": []}})


def test_head_and_loss_train_on_a_tiny_set(shapes):
    torch.manual_seed(0)
    cfg = _yolo_cfg(shapes)
    splits = YOLO_TASK.build_datasets(cfg)
    model = YOLO_TASK.build_model(cfg, splits.class_names)
    images, targets = YOLO_TASK.collate([splits.train[i] for i in range(8)])
    assert sum(len(t["boxes"]) for t in targets) > 0
    x = images.float() / 255
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    model.train()
    history = []
    for _ in range(30):
        losses = model(x, targets)
        assert set(losses) == {"loss_box", "loss_cls", "loss_dfl"}
        assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    # TAL losses first rise (more anchors get aligned as scores grow), then fall well below the start.
    assert history[-1] < 0.6 * history[0] and history[-1] < 0.3 * max(history), history

    # eval: raw (B, 4 + nc, A) -> Detections in original pixels through the shared postprocess
    model.eval()
    with torch.no_grad():
        raw = model(x)
    anchors = sum((64 // s) ** 2 for s in (8, 16, 32))
    assert raw.shape == (8, 4 + 3, anchors)
    dets = YOLO_TASK.postprocess(raw, [t["meta"] for t in targets], conf=0.0, iou=0.5, max_det=10)
    assert len(dets) == 8 and all(isinstance(p.detections, Detections) and len(p.detections) <= 10 for p in dets)


def test_empty_targets_give_finite_loss(shapes):
    cfg = _yolo_cfg(shapes)
    model = YOLO_TASK.build_model(cfg, ["a", "b", "c"]).train()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses = model(torch.rand(2, 3, 64, 64), empty)
    assert torch.isfinite(sum(losses.values()))
    assert float(losses["loss_box"].detach()) == 0.0


def test_bad_imgsz_and_backbone_are_one_line_errors(shapes):
    from cvapps.errors import CvappsError

    with pytest.raises(CvappsError, match="multiple of 32"):
        YOLO_TASK.build_model(validate(YoloConfig, {**_yolo_cfg(shapes).model_dump(), "data": {
            "root": str(shapes), "imgsz": 70}}), ["a"])
    with pytest.raises(CvappsError, match="strides"):
        YOLO_TASK.build_model(_yolo_cfg(shapes, backbone="lenet"), ["a"])


@pytest.mark.parametrize("hw", [(100, 220), (230, 90)])
def test_letterbox_round_trip_on_non_square_images(hw):
    """A box drawn on a non-square image lands where the letterbox meta says, and a detection
    at that place in network pixels maps back to the original box exactly."""
    h, w = hw
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = w // 5, h // 4, w // 5 + w // 3, h // 4 + h // 2
    image[y1:y2, x1:x2] = 255
    net, meta = YOLO_TASK.preprocess(image, 160)
    assert net.shape == (160, 160, 3)
    box = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32)
    in_net = meta.boxes_to_input(box)[0]
    ys, xs = np.nonzero(net[..., 0] > 127)
    found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert torch.allclose(found, in_net, atol=1.5), (found, in_net)
    assert torch.allclose(meta.boxes_to_original(meta.boxes_to_input(box)), box, atol=1e-4)

    # A raw YOLO output with one confident anchor at that box -> the original box.
    nc, anchors = 3, sum((160 // s) ** 2 for s in (8, 16, 32))
    raw = torch.zeros(1, 4 + nc, anchors)
    cx, cy, bw, bh = (in_net[0] + in_net[2]) / 2, (in_net[1] + in_net[3]) / 2, in_net[2] - in_net[0], in_net[3] - in_net[1]
    raw[0, :4, 17] = torch.stack([cx, cy, bw, bh])
    raw[0, 4 + 2, 17] = 0.9
    det = YOLO_TASK.postprocess(raw, [meta], conf=0.25)[0].detections
    assert len(det) == 1 and int(det.labels[0]) == 2 and abs(float(det.scores[0]) - 0.9) < 1e-6
    assert torch.allclose(det.boxes, box, atol=1e-3), det.boxes


def test_native_yaml_model_gives_detections_in_original_pixels():
    """ultralytics yolov8n.yaml (random weights) through our predictor == ultralytics' own
    NMS + scale_boxes on the same network input, as Detections in original pixels."""
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    from cvapps.engine.load import load_model

    torch.manual_seed(0)
    predictor = load_model("yolov8n.yaml", device="cpu", batch=2, imgsz=128).predictor()
    assert predictor.class_names[:2] == ["0", "1"] and len(predictor.class_names) == 80
    image = (np.random.default_rng(0).random((90, 200, 3)) * 255).astype(np.uint8)
    det = predictor(image, conf=0.0, iou=0.7, max_det=25).detections
    assert isinstance(det, Detections) and len(det) == 25
    assert det.boxes[:, [0, 2]].max() <= 200 and det.boxes[:, [1, 3]].max() <= 90 and det.boxes.min() >= 0

    assert predictor.rect, "ultralytics models take rect (multiple-of-32) inputs"
    net, meta = predictor.task.preprocess(image, 128, rect=True)
    assert net.shape[:2] == (64, 128), "90x200 scaled to 58x128, padded to 64x128, not 128x128"
    with torch.inference_mode():
        raw = predictor.model(torch.from_numpy(net).permute(2, 0, 1)[None].float() / 255)
    assert raw.shape[1] == 4 + 80
    ref = non_max_suppression(raw, 0.0, 0.7, max_det=25)[0]
    ref_boxes = scale_boxes(net.shape[:2], ref[:, :4].clone(), image.shape[:2])
    assert torch.allclose(det.scores, ref[:, 4], atol=1e-6)
    assert torch.equal(det.labels, ref[:, 5].long())
    # ultralytics rounds its padding to whole pixels the same way, within a pixel
    assert torch.allclose(det.boxes, ref_boxes, atol=1.0), (det.boxes - ref_boxes).abs().max()


def test_native_segmentation_model_returns_boxes_and_masks():
    from cvapps.engine.load import load_model

    predictor = load_model("yolov8n-seg.yaml", device="cpu", imgsz=64).predictor()
    det = predictor(np.full((48, 64, 3), 100, np.uint8), conf=0.0, max_det=5).detections
    assert isinstance(det, Detections) and len(det) == 5
    assert int(det.labels.max()) < 80  # mask coefficients were not taken for classes
    assert det.masks is not None and tuple(det.masks.shape) == (5, 48, 64)  # original pixels


def test_cli_detect_native_yaml_writes_valid_json(tmp_path, capsys):
    from pycocotools.coco import COCO
    from ultralytics.utils import ASSETS

    from cvapps.cli import main

    out = tmp_path / "out"
    code = main(["detect", str(ASSETS), "--model", "yolov8n.yaml", "--save-json", "--out", str(out),
                 "--conf", "0", "--max-det", "7", "--device", "cpu", "--quiet"])
    assert code == 0
    preds = json.loads((out / "predictions.json").read_text())
    n_images = len([p for p in Path(ASSETS).iterdir() if p.suffix.lower() == ".jpg"])
    assert len(preds) == 7 * n_images
    for p in preds:
        assert set(p) >= {"image_id", "category_id", "bbox", "score"} and len(p["bbox"]) == 4
        assert 1 <= p["category_id"] and p["bbox"][2] >= 0 and p["bbox"][3] >= 0
    dataset = COCO(str(out / "predictions_coco.json"))
    assert len(dataset.getImgIds()) == n_images and len(dataset.getAnnIds()) == 7 * n_images
    assert len(list(out.rglob("*.jpg"))) == n_images  # annotated images


def test_missing_ultralytics_weights_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import ultralytics

    from cvapps.cli import main

    def no_download(*args, **kwargs):  # YOLO() would try to download: it must not be reached
        raise AssertionError("YOLO() called for a missing weights file")

    monkeypatch.setattr(ultralytics, "YOLO", no_download)
    monkeypatch.chdir(tmp_path)
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    code = main(["detect", "a.jpg", "--model", "yolov8n.pt", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "yolov8n.pt" in err and "place the file at" in err and str(tmp_path) in err


def test_model_files_are_told_apart_by_loading_not_by_their_bytes(tmp_path):
    """A cvapps checkpoint that mentions "ultralytics" is still a cvapps checkpoint; a published
    ultralytics name that is missing gets the "place the file" message."""
    from tiny_checkpoints import SHAPES, make_checkpoint

    from cvapps.engine.load import load_model
    from cvapps.errors import CheckpointError

    ckpt = make_checkpoint(tmp_path / "model.pt", "yolo_shapes.yaml", ["data.imgsz=64", "data.names=[ultralytics, b, c]"],
                           SHAPES)
    assert load_model(ckpt).task.name == "yolo"
    with pytest.raises(CheckpointError, match="place the file at"):
        load_model(tmp_path / "yolo11n.pt")


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_coco_is_mirrored_as_yolo_txt_in_the_run_folder(shapes, tmp_path):
    from cvapps.tasks.ultralytics_native import mirror_as_yolo

    before = _tree_digest(shapes)
    data_yaml = mirror_as_yolo(shapes, tmp_path / "run" / "dataset")
    assert _tree_digest(shapes) == before  # the user's dataset is only read
    import yaml

    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["names"] == {0: "circle", 1: "square", 2: "triangle"}
    coco = json.loads((shapes / "annotations" / "val.json").read_text())
    labels = sorted((tmp_path / "run" / "dataset" / "labels" / "val").glob("*.txt"))
    assert len(labels) == len(coco["images"])
    rows = [line.split() for f in labels for line in f.read_text().splitlines()]
    assert len(rows) == len([a for a in coco["annotations"] if not a.get("iscrowd")])
    assert all(0 <= int(r[0]) < 3 and all(0 <= float(v) <= 1 for v in r[1:]) for r in rows)
    # the first annotation, converted back from normalised xywh, is the COCO box
    first = coco["annotations"][0]
    im = next(i for i in coco["images"] if i["id"] == first["image_id"])
    stem = Path(im["file_name"]).stem
    x, y, bw, bh = first["bbox"]
    got = [list(map(float, line.split()[1:])) for line in
           (tmp_path / "run" / "dataset" / "labels" / "val" / f"{stem}.txt").read_text().splitlines()]
    want = [(x + bw / 2) / im["width"], (y + bh / 2) / im["height"], bw / im["width"], bh / im["height"]]
    assert any(np.allclose(g, want, atol=1e-4) for g in got)
    images = list((tmp_path / "run" / "dataset" / "images" / "val").iterdir())
    assert len(images) == len(coco["images"]) and all(p.resolve().parent == (shapes / "images" / "val").resolve()
                                                       for p in images)


def test_ultralytics_trainer_runs_on_our_coco_layout(shapes, tmp_path):
    """`model.arch: ultralytics` trains through ultralytics' trainer via cvapps' train(); the
    COCO dataset is only read; the result runs through `cvapps detect` as a native model."""
    from cvapps.cli import main
    from cvapps.engine.load import load_model
    from cvapps.engine.train import train
    from cvapps.tasks import load_config

    before = _tree_digest(shapes)
    cfg = load_config(Path(__file__).parents[1] / "configs" / "ultralytics_shapes.yaml",
                      [f"data.root={shapes}", "data.imgsz=64", "train.epochs=1", "train.batch=8",
                       "train.device=cpu", f"out={tmp_path / 'run'}"])
    result = train(cfg, progress=False, log=lambda msg: None)
    assert _tree_digest(shapes) == before
    assert result.best.is_file()
    assert len(result.history) == 1 and "val/map50" in result.history[0]
    loaded = load_model(result.best, device="cpu")  # an ultralytics file, read without --trust-model
    assert loaded.task.name == "ultralytics"
    predictor = loaded.predictor()
    assert predictor.class_names == ["circle", "square", "triangle"] and predictor.imgsz == 64
    # every model `cvapps train` writes can be evaluated (issue 11): on its mirrored dataset by default
    assert main(["val", str(result.best), "train.device=cpu", "--out", str(tmp_path / "val")]) == 0
    metrics = json.loads((tmp_path / "val" / "val_metrics.json").read_text())
    assert {"map", "map50", "map75"} <= set(metrics) and 0 <= metrics["map50"] <= 1


def test_head_layout_does_not_change_after_loading_a_v8_model(shapes):
    """ultralytics flips Detect.legacy on the class when it parses a v8 file; our head is pinned."""
    from ultralytics.nn.modules import Detect

    from cvapps.tasks.ultralytics_native import native_detector

    cfg = _yolo_cfg(shapes)
    before = set(YOLO_TASK.build_model(cfg, ["a", "b", "c"]).state_dict())
    legacy = Detect.legacy
    try:
        native_detector("yolov8n.yaml", fuse=False)
        assert set(YOLO_TASK.build_model(cfg, ["a", "b", "c"]).state_dict()) == before
    finally:
        Detect.legacy = legacy


@pytest.mark.parametrize("iou", [0.3, 0.7])
def test_postprocess_skips_a_second_nms_without_changing_the_boxes(iou):
    """YOLO's raw detections come out of ultralytics' class-wise NMS at the given iou; postprocess
    takes them as they are (raw_nms_at_iou): the same boxes as with cvapps' class-wise NMS run again."""
    from cvapps.data.letterbox import LetterboxMeta
    from cvapps.nms import class_wise_nms

    g = torch.Generator().manual_seed(0)
    a, nc = 400, 3
    xy, wh = torch.rand(2, 2, a, generator=g) * 140 + 10, torch.rand(2, 2, a, generator=g) * 40 + 5
    outputs = torch.cat([xy, wh, torch.rand(2, nc, a, generator=g)], 1)  # (B, 4 + nc, A) xywh
    metas = [LetterboxMeta((160, 160), (1.0, 1.0), (0, 0), (160, 160))] * 2
    got = YOLO_TASK.postprocess(outputs, metas, conf=0.3, iou=iou, max_det=300)
    for (boxes, scores, labels), pred in zip(YOLO_TASK.raw_detections(outputs, conf=0.3, iou=iou), got):
        keep = class_wise_nms(boxes.float(), scores.float(), labels, iou)
        assert len(keep) == len(boxes) > 5  # the second pass would drop nothing
        assert torch.equal(pred.detections.boxes, metas[0].boxes_to_original(boxes[keep]))
        assert torch.equal(pred.detections.scores, scores[keep].float())
