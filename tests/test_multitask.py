"""task: multitask: one backbone pass feeding the YOLO, FCN-8s and presence heads (tiny data, 64 px)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from tiny_checkpoints import ROOT, multitask_checkpoint

from cvapps.cli import main as cli
from cvapps.engine.device import images_to_device
from cvapps.engine.load import load_model
from cvapps.engine.predict import PredictOptions, Predictor
from cvapps.engine.evaluate import evaluate_checkpoint
from cvapps.engine.train import build_optimizer, make_loader, train
from cvapps.errors import ConfigError
from cvapps.io.draw import draw_prediction
from cvapps.io.sinks import CocoSink
from cvapps.structures import Frame, Prediction
from cvapps.tasks import get_task, load_config
from cvapps.tasks.multitask import select_part
from cvapps.tasks.multitask_config import MultiTaskConfig

CONFIG = ROOT / "configs" / "multitask_shapes.yaml"
TASK = get_task("multitask")


def _cfg(root: Path, *overrides: str) -> MultiTaskConfig:
    return load_config(CONFIG, [f"data.root={root}", "data.imgsz=64", "data.workers=0", "train.batch=4",
                                "train.device=cpu", *overrides])


def _batch(cfg: MultiTaskConfig, dataset) -> tuple[torch.Tensor, list]:
    images, targets = next(iter(make_loader(TASK, dataset, cfg, shuffle=False, device=torch.device("cpu"))))
    return images_to_device(images, torch.device("cpu")), targets


def test_backbone_runs_once_per_batch_for_every_head(small_shapes: Path) -> None:
    cfg = _cfg(small_shapes)
    torch.manual_seed(0)
    model = TASK.build_model(cfg, ["circle", "square", "triangle"]).eval()
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    images = [(np.random.default_rng(i).random((50 + i, 70, 3)) * 255).astype(np.uint8) for i in range(3)]
    predictor = Predictor(TASK, model, ["circle", "square", "triangle"], TASK.preprocessing(cfg),
                          PredictOptions(device="cpu", batch=3, prefetch=0))
    results = [p for _, p in predictor.predict([Frame(im, f"im{i}", i) for i, im in enumerate(images)], conf=0.0)]
    assert len(calls) == 1, "one backbone pass served the whole batch"
    assert [type(p) for p in results] == [Prediction] * 3
    for image, pred in zip(images, results):
        assert list(pred.parts()) == ["detections", "semantic", "presence"] and len(pred.detections) > 0
        assert pred.semantic.mask.shape == image.shape[:2] and pred.semantic.extra_background
        assert pred.presence.scores.shape == (3,)
    # the training forward also runs the backbone once for all the losses
    calls.clear()
    splits = TASK.build_datasets(cfg)
    model.train()
    losses = model(*_batch(cfg, splits.train))
    assert len(calls) == 1
    assert set(losses) == {"loss_box", "loss_cls", "loss_dfl", "loss_seg", "loss_presence"}


def _quality(model, x: torch.Tensor, targets: list) -> tuple[float, float]:
    """(mean over images of the best IoU of the 10 top boxes with any ground-truth box,
    share of object pixels (mask 1..K) whose class is right) on one batch, in network pixels."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was)
    preds = TASK.postprocess(out, [t["meta"] for t in targets], conf=0.0, max_det=10)
    ious = [box_iou(p.detections.boxes, t["meta"].boxes_to_original(t["boxes"])).max().item()
            for p, t in zip(preds, targets)]
    masks = torch.stack([t["mask"] for t in targets])
    objects = (masks != 255) & (masks != 0)
    right = (out["segment"].argmax(1) == masks)[objects].float().mean().item()
    return float(np.mean(ious)), right


def test_joint_training_reduces_losses_and_learns_both_tasks(small_shapes: Path) -> None:
    cfg = _cfg(small_shapes, "augment.train=[]", "train.lr=0.003")
    splits = TASK.build_datasets(cfg)
    torch.manual_seed(0)
    model = TASK.build_model(cfg, splits.class_names).train()
    x, y = _batch(cfg, splits.train)
    iou0, pix0 = _quality(model, x, y)
    optimizer = build_optimizer(model, cfg.train)
    history = []
    for _ in range(30):  # at 20 steps the pixel share sat at the bar (0.19-0.24 with the thread count's rounding)
        losses = model(x, y)
        history.append({k: float(v.detach()) for k, v in losses.items()})
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    det = [h["loss_box"] + h["loss_cls"] + h["loss_dfl"] for h in history]
    # YOLO's task-aligned assigner gives random predictions few positives, so the detection loss first
    # rises as predictions align with the boxes; it must then fall well below that peak.
    assert det[-1] < 0.5 * max(det), det
    for key in ("loss_seg", "loss_presence"):
        assert history[-1][key] < 0.6 * history[0][key], (key, history[0][key], history[-1][key])
    iou1, pix1 = _quality(model, x, y)
    assert iou1 > iou0 + 0.1, (iou0, iou1)
    assert pix1 > pix0 + 0.2, (pix0, pix1)


def test_missing_labels_are_ignored_not_background(small_shapes: Path, tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    shutil.copytree(small_shapes, root, ignore=shutil.ignore_patterns("classify", "video", "labels"))
    train_imgs = sorted((root / "images" / "train").iterdir())
    no_mask = train_imgs[0]
    (root / "masks" / "train" / f"{no_mask.stem}.png").unlink()
    # an image with a mask that the detection annotations do not list: masks only
    shutil.copy(train_imgs[1], root / "images" / "train" / "extra.png")
    shutil.copy(root / "masks" / "train" / f"{train_imgs[1].stem}.png", root / "masks" / "train" / "extra.png")
    cfg = _cfg(root, "augment.train=[]")
    splits = TASK.build_datasets(cfg)
    items = {Path(it.path).name: it for it in splits.train.items}
    assert items[no_mask.name].mask is None and items[no_mask.name].record is not None
    assert items["extra.png"].record is None and items["extra.png"].mask is not None

    names = [Path(it.path).name for it in splits.train.items]
    _, target = splits.train[names.index(no_mask.name)]
    assert bool((target["mask"] == 255).all()), "a missing mask is ignore (255), not background (0)"
    _, extra = splits.train[names.index("extra.png")]
    assert extra["has_boxes"] is False and bool((extra["mask"] != 255).any())

    torch.manual_seed(0)
    model = TASK.build_model(cfg, splits.class_names).train()
    image, target = splits.train[names.index(no_mask.name)]
    losses = model(image[None].float() / 255, [target])
    assert losses["loss_seg"].item() == 0.0 and losses["loss_box"].item() > 0
    image, target = splits.train[names.index("extra.png")]
    losses = model(image[None].float() / 255, [target])
    assert losses["loss_seg"].item() > 0
    assert losses["loss_box"].item() == losses["loss_cls"].item() == losses["loss_presence"].item() == 0.0
    sum(losses.values()).backward()  # zero losses keep a graph: the step still runs


def test_loss_weights_and_head_choice(small_shapes: Path) -> None:
    losses = {}
    for weight in (1, 3):
        cfg = _cfg(small_shapes, f"model.heads.segment.loss_weight={weight}", "augment.train=[]")
        splits = TASK.build_datasets(cfg)
        torch.manual_seed(0)
        model = TASK.build_model(cfg, splits.class_names).train()
        losses[weight] = model(*_batch(cfg, splits.train))
    assert losses[3]["loss_seg"].item() == pytest.approx(3 * losses[1]["loss_seg"].item(), rel=1e-4)
    assert losses[3]["loss_box"].item() == pytest.approx(losses[1]["loss_box"].item(), rel=1e-4)

    cfg = _cfg(small_shapes, "model.heads.detect=null", "model.heads.classify=null",
               "model.heads.segment.features=backbone")
    model = TASK.build_model(cfg, ["circle", "square", "triangle"])
    assert list(model.heads) == ["segment"] and model.neck is None
    with pytest.raises(ConfigError, match="at least one head"):
        _cfg(small_shapes, "model.heads.detect=null", "model.heads.segment=null", "model.heads.classify=null")


def test_train_val_export_and_each_command_takes_its_part(small_shapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert cli(["train", str(CONFIG), f"data.root={small_shapes}", "data.imgsz=64", "train.epochs=1",
                "train.batch=8", "train.device=cpu", f"out={out}", "--quiet"]) == 0
    ckpt = out / "best.pt"

    assert cli(["val", str(ckpt), "--out", str(tmp_path / "val")]) == 0
    metrics = json.loads((tmp_path / "val" / "val_metrics.json").read_text())
    assert {"map", "map50", "miou", "pixel_acc", "presence_f1", "score"} <= set(metrics)
    assert metrics["score"] == pytest.approx((metrics["map"] + metrics["miou"] + metrics["presence_f1"]) / 3, abs=1e-6)

    pytest.importorskip("onnxruntime")
    assert cli(["export", str(ckpt), "--format", "onnx"]) == 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "best.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["detect", "segment", "classify"]
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    det, seg, cls = session.run(None, {"images": x})
    assert det.shape[:2] == (2, 7) and seg.shape == (2, 4, 64, 64) and cls.shape == (2, 3)

    images = small_shapes / "images" / "val"
    n = len(list(images.iterdir()))
    assert cli(["detect", str(images), "--model", str(ckpt), "--out", str(tmp_path / "detect"), "--save-json",
                "--conf", "0", "--max-det", "3", "--quiet"]) == 0
    dets = json.loads((tmp_path / "detect" / "predictions.json").read_text())
    assert len(dets) == 3 * n and all("bbox" in r and "segmentation" not in r for r in dets)
    assert cli(["segment", str(images), "--model", str(out / "best.onnx"), "--out", str(tmp_path / "segment"),
                "--save-json", "--quiet"]) == 0
    coco = json.loads((tmp_path / "segment" / "predictions_coco.json").read_text())
    assert len(coco["images"]) == n and [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle"]
    assert len(list((tmp_path / "segment" / "masks").rglob("*.png"))) == n

    capsys.readouterr()
    assert cli(["summary", str(CONFIG), "data.imgsz=64", f"data.root={small_shapes}"]) == 0
    parts = capsys.readouterr().out.split("parts:")[1]
    assert parts.count("backbone") == 1 and "neck" in parts
    assert all(f"heads.{h}" in parts for h in ("detect", "segment", "classify"))


def test_combined_prediction_drawn_and_saved_under_one_image_id(small_shapes: Path, tmp_path: Path) -> None:
    path = multitask_checkpoint(tmp_path / "mt.pt", _cfg(small_shapes), 2)  # the mask says "square" everywhere
    loaded = load_model(path, device="cpu")
    image = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    pred = loaded.predictor()(image, conf=0.0, max_det=5)
    assert pred.semantic is not None and len(pred.detections) == 5
    drawn = draw_prediction(image, pred, loaded.class_names)
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)

    sink = CocoSink(tmp_path / "coco.json", loaded.class_names, loaded.category_ids)
    sink.write(Frame(image, "a.png"), pred)
    data = sink.dataset()
    assert len(data["images"]) == 1
    anns = data["annotations"]
    assert {a["image_id"] for a in anns} == {data["images"][0]["id"]}
    boxes = [a for a in anns if "segmentation" not in a]
    masks = [a for a in anns if "segmentation" in a]
    assert len(boxes) == 5 and {a["category_id"] for a in boxes} <= {1, 2, 3}
    assert [a["category_id"] for a in masks] == [2] and masks[0]["area"] == 60 * 80  # mask class 2 -> category 2

    seg = select_part(loaded, "segment")
    assert seg.class_names == ["background", "circle", "square", "triangle"] and seg.category_ids == [0, 1, 2, 3]
    part = seg.predictor()(image)
    assert list(part.parts()) == ["semantic"] and not part.semantic.extra_background
    assert np.array_equal(part.semantic.mask, pred.semantic.mask)


def test_annotate_video_uses_one_multitask_model(small_shapes: Path, tmp_path: Path) -> None:
    import importlib.util

    import cvapps
    from pycocotools.coco import COCO

    path = multitask_checkpoint(tmp_path / "mt.pt", _cfg(small_shapes), 1)  # the mask says "circle" everywhere
    spec = importlib.util.spec_from_file_location("annotate_video", ROOT / "pipelines" / "annotate_video.py")
    sys.path.insert(0, str(ROOT / "pipelines"))
    try:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # as an import would: dataclasses look their module up there
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "pipelines"))
    calls = []
    mt = cvapps.load(path, device="cpu", batch=4)
    mt.loaded.model.backbone.register_forward_hook(lambda *_: calls.append(1))
    video = small_shapes / "video" / "shapes.mp4"
    report = mod.annotate(str(video), tmp_path / "out", multitask=mt,
                          settings=mod.AnnotateSettings(conf=0.0, progress=False))
    assert report.processed == 24 and len(calls) == 6  # 24 frames in batches of 4: one pass per batch
    assert (tmp_path / "out" / "shapes.mp4").is_file()
    coco = COCO(str(tmp_path / "out" / "multitask_coco.json"))
    assert len(coco.getImgIds()) == 24
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[coco.getImgIds()[0]]))
    assert any("segmentation" in a and a["category_id"] == 1 for a in anns)
    assert any("segmentation" not in a for a in anns)


def test_predict_command_runs_the_whole_model(small_shapes: Path, tmp_path: Path, capsys) -> None:
    import cv2
    from pycocotools.coco import COCO

    ckpt = multitask_checkpoint(tmp_path / "mt.pt", _cfg(small_shapes), 2)  # the mask says "square" everywhere
    images = small_shapes / "images" / "val"
    n = len(list(images.iterdir()))
    common = [str(images), "--model", str(ckpt), "--save-json", "--quiet"]
    boxes = ["--conf", "0", "--max-det", "3"]
    out = tmp_path / "all"
    assert cli(["predict", *common, *boxes, "--out", str(out), "--save-jsonl"]) == 0
    coco = COCO(str(out / "predictions_coco.json"))
    assert len(coco.getImgIds()) == n
    for image_id in coco.getImgIds():  # boxes and class masks of a frame under its one image id
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len([a for a in anns if "segmentation" not in a]) == 3
        assert [a["category_id"] for a in anns if "segmentation" in a] == [2]
    drawn = sorted(p for p in out.glob("*") if p.suffix in (".png", ".jpg"))
    assert len(drawn) == n
    for path in drawn:  # mask and boxes drawn over the input
        assert not np.array_equal(cv2.imread(str(path)), cv2.imread(str(images / path.name)))
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == n and len(lines[0]["prediction"]["boxes"]) == 3
    assert [c["name"] for c in lines[0]["prediction"]["classes"]] == ["square"]
    assert len(lines[0]["prediction"]["presence"]) == 3  # every class's presence probability

    # the one forward's parts are what `cvapps detect` / `cvapps segment` write for the same checkpoint
    assert cli(["detect", *common, *boxes, "--out", str(tmp_path / "det")]) == 0
    assert cli(["segment", *common, "--out", str(tmp_path / "seg")]) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert [r for r in results if "segmentation" not in r] == json.loads((tmp_path / "det" / "predictions.json").read_text())
    assert [r for r in results if "segmentation" in r] == json.loads((tmp_path / "seg" / "predictions.json").read_text())
    # its class-index mask PNGs too, file for file
    masks = {p.relative_to(out / "masks"): p.read_bytes() for p in (out / "masks").rglob("*.png")}
    assert len(masks) == n
    assert masks == {p.relative_to(tmp_path / "seg" / "masks"): p.read_bytes()
                     for p in (tmp_path / "seg" / "masks").rglob("*.png")}
    assert cli(["predict", *common, "--out", str(tmp_path / "no_masks"), "--no-masks"]) == 0
    assert not (tmp_path / "no_masks" / "masks").exists() and (tmp_path / "no_masks" / "predictions.json").is_file()

    capsys.readouterr()
    assert cli(["predict", *common, "--out", str(tmp_path / "bad"), "--track"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--track: not an option for a multitask model" in err[0]  # (--ray: tests/test_ray.py)


def test_api_results_of_a_multitask_model(small_shapes: Path, tmp_path: Path) -> None:
    import cvapps
    from cvapps.errors import CvappsError

    model = cvapps.load(multitask_checkpoint(tmp_path / "mt.pt", _cfg(small_shapes), 3), device="cpu")
    image = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    (r,) = model.predict(image, conf=0.0, max_det=4)
    assert r.boxes.shape == (4, 4) and r.scores.shape == (4,) and r.labels.dtype == np.int64
    assert r.mask.shape == (60, 80) and np.unique(r.mask).tolist() == [3] and r.mask_names[3] == "triangle"
    assert r.presence.shape == (3,) and r.present.tolist() == np.flatnonzero(r.presence >= 0.5).tolist()
    (det,) = model.part("detect").predict(image, conf=0.0, max_det=4)
    (seg,) = model.part("segment").predict(image)
    np.testing.assert_array_equal(r.boxes, det.boxes)
    np.testing.assert_array_equal(r.mask, seg.mask)
    coco = r.to_coco(7)  # as predictions.json holds it: boxes and masks under one image id
    assert {c["image_id"] for c in coco} == {7}
    assert [c for c in coco if "segmentation" not in c] == det.to_coco(7)
    assert [c for c in coco if "segmentation" in c] == seg.to_coco(7) and seg.to_coco(7)
    d = r.to_dict()
    assert len(d["boxes"]) == 4 and [c["name"] for c in d["classes"]] == ["triangle"]
    assert [p["label"] for p in d["present"]] == r.present.tolist()
    assert not np.array_equal(r.plot(), image)
    assert "4 detections" in repr(r) and "triangle" in repr(r)
    with pytest.raises(CvappsError, match="Classification"):
        r.label


@pytest.mark.slow
def test_short_budget_matches_the_single_task_models(tmp_path: Path) -> None:
    """The issue's accuracy point on a short budget (benchmarks/multitask_vs_separate.py --train runs
    the full one): the shipped YOLO, FCN and multitask configs, 30 epochs each at 96 px on the sample
    data, scored on its held-out split; the multitask model's one shared pass must score within 0.1
    of each single-task model, after both single-task models have learned. On this budget the gap moves
    from run to run with the thread count's float rounding (mIoU -0.05 to +0.06, mAP50 +0.06 to +0.10
    over three runs), so the 0.02 of the issue is checked on the full budget by the benchmark."""
    scores = {}
    for name in ("yolo", "segment", "multitask"):
        cfg = load_config(ROOT / "configs" / f"{name}_shapes.yaml", [
            f"data.root={ROOT / 'sample_data' / 'shapes'}", "data.imgsz=96", "train.epochs=30", "train.val_every=30",
            "train.device=cpu", "train.log=[]", f"out={tmp_path / name}"])
        scores[name] = evaluate_checkpoint(train(cfg, progress=False, log=lambda m: None).best, ["train.device=cpu"])
    yolo, fcn, both = scores["yolo"]["map50"], scores["segment"]["miou"], scores["multitask"]
    assert yolo > 0.5 and fcn > 0.4, scores  # both learned: the comparison means something
    assert both["map50"] > yolo - 0.1 and both["miou"] > fcn - 0.1, scores
