"""Native ultralytics ``-seg`` models: instance masks in Detections, drawn, written as COCO RLE
(pycocotools ``segm`` evaluation runs on them); published weights names: offline error, and the
download path exercised by a stand-in downloader (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvapps.structures import Detections

SIZES = [(90, 150), (120, 80), (64, 64)]  # (H, W) of the synthetic images


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory) -> Path:
    """A random-init yolov8n-seg saved with ultralytics' own save code (96 px input, fixed seed)."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolov8n-seg.yaml")  # builds offline
    yolo.model.args = {"imgsz": 96}  # the size cvapps runs it at (read back as the training size)
    path = tmp_path_factory.mktemp("seg") / "seg.pt"
    yolo.save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        cv2.rectangle(img, (w // 4, h // 4), (3 * w // 4, 3 * h // 4), (20, 200, 20), -1)
        cv2.imwrite(str(root / f"im{i}.png"), img)
    return root


def _predict(model: Path, images: Path) -> dict[str, Detections]:
    from cvapps.engine.load import load_model

    predictor = load_model(model, device="cpu").predictor()
    return {p.name: predictor(cv2.imread(str(p)), conf=0.0, iou=0.5, max_det=5).detections  # the CLI's defaults
            for p in sorted(images.glob("*.png"))}


@pytest.fixture(scope="module")
def detected(seg_model, images, tmp_path_factory) -> tuple[dict[str, Detections], Path]:
    from cvapps.cli import main

    out = tmp_path_factory.mktemp("out")
    assert main(["detect", str(images), "--model", str(seg_model), "--save-json", "--out", str(out),
                 "--conf", "0", "--max-det", "5", "--device", "cpu", "--save-jsonl", "--quiet"]) == 0
    return _predict(seg_model, images), out


def test_seg_model_yields_masks_of_the_original_size(detected):
    dets, _ = detected
    for (h, w), det in zip(SIZES, dets.values()):
        assert len(det) == 5 and det.masks is not None
        assert det.masks.dtype == torch.bool and tuple(det.masks.shape) == (5, h, w)
        # masks are cut to their boxes (ultralytics' crop), in original pixels
        for box, mask in zip(det.boxes.tolist(), det.masks):
            ys, xs = np.nonzero(mask.numpy())
            if len(xs):
                assert xs.min() >= int(box[0]) - 1 and xs.max() <= box[2] + 1
                assert ys.min() >= int(box[1]) - 1 and ys.max() <= box[3] + 1
    assert any(bool(d.masks.any()) for d in dets.values())  # the seeded model draws something


def test_box_only_models_have_no_masks_and_slicing_keeps_masks_aligned():
    det = Detections(torch.tensor([[0, 0, 4, 4], [1, 1, 2, 2]]), torch.tensor([0.9, 0.5]), torch.tensor([1, 0]))
    assert det.masks is None and det[det.scores > 0.6].masks is None
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[1, 2:4, 2:4] = True
    det = Detections(det.boxes, det.scores, det.labels, masks)
    kept = det[det.scores < 0.6]
    assert kept.masks.shape == (1, 8, 8) and int(kept.masks.sum()) == 4
    with pytest.raises(ValueError, match="masks"):
        Detections(det.boxes, det.scores, det.labels, torch.zeros(3, 8, 8))


def test_rle_in_both_coco_files_decodes_to_the_detections_masks(detected):
    dets, out = detected
    preds = json.loads((out / "predictions.json").read_text())
    dataset = json.loads((out / "predictions_coco.json").read_text())
    id_of = {im["file_name"]: im["id"] for im in dataset["images"]}
    for name, det in dets.items():
        rows = [p for p in preds if p["image_id"] == id_of[name]]
        anns = [a for a in dataset["annotations"] if a["image_id"] == id_of[name]]
        assert len(rows) == len(anns) == len(det)
        for row, ann, mask, box in zip(rows, anns, det.masks, det.boxes.tolist()):
            assert "bbox" in row and "segmentation" in row
            assert np.array_equal(mask_utils.decode(row["segmentation"]).astype(bool), mask.numpy())
            assert np.array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), mask.numpy())
            assert ann["area"] == int(mask.sum())  # the mask's area, the box stays the detection's
            assert ann["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]], abs=0.01)
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == len(dets)
    for line in lines:
        det = dets[Path(line["source"]).name]
        assert [len(m) for m in (line["prediction"]["masks"], line["prediction"]["boxes"])] == [len(det)] * 2
        areas = [int(mask_utils.area(rle)) for rle in line["prediction"]["masks"]]
        assert areas == det.masks.flatten(1).sum(1).tolist()


def test_pycocotools_segm_evaluation_runs_on_the_file(detected):
    dets, out = detected
    dataset = json.loads((out / "predictions_coco.json").read_text())
    # ground truth: each image's best non-empty predicted mask, so segm AP must come out above 0
    gt = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
    for im in dataset["images"]:
        det = dets[im["file_name"]]
        nonempty = [i for i in range(len(det)) if det.masks[i].any()]
        if not nonempty:
            continue
        rle = mask_utils.encode(np.asfortranarray(det.masks[nonempty[0]].numpy().astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": im["id"],
                                  "category_id": int(det.labels[nonempty[0]]) + 1, "segmentation": rle,
                                  "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle)),
                                  "iscrowd": 0})
    assert gt["annotations"]
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(str(out / "predictions.json"))
    assert all("segmentation" in a for a in coco_dt.dataset["annotations"])
    ev = COCOeval(coco_gt, coco_dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 0 < ev.stats[0] <= 1 and 0 < ev.stats[1] <= 1


def test_annotated_image_differs_from_box_only_drawing_where_the_mask_is(detected, images):
    from cvapps.io.draw import draw_detections

    dets, _ = detected
    name, det = next((n, d) for n, d in dets.items() if d.masks.any())
    image = cv2.imread(str(images / name))
    names = [str(i) for i in range(80)]
    with_masks = draw_detections(image, det, names)
    boxes_only = draw_detections(image, Detections(det.boxes, det.scores, det.labels), names)
    changed = np.any(with_masks != boxes_only, axis=2)
    union = det.masks.any(0).numpy()
    assert changed.any() and not changed[~union].any()  # only mask pixels change
    assert changed[union].mean() > 0.5  # most of them (box lines and labels are drawn on top)


# --- published names -----------------------------------------------------------------------------
def test_offline_published_name_is_a_quick_one_line_error(tmp_path):
    cv2.imwrite(str(tmp_path / "img.jpg"), np.zeros((32, 32, 3), np.uint8))
    env = {**os.environ, "CVAPPS_OFFLINE": "1"}
    env.pop("YOLO_OFFLINE", None)  # CVAPPS_OFFLINE alone must stop the download
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cvapps", "detect", "img.jpg", "--model", "yolov8n.pt"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    print(f"offline refusal took {time.perf_counter() - t0:.1f} s (mostly importing torch)")
    err = proc.stderr.strip()
    assert proc.returncode != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "yolov8n.pt" in err and "place the file at" in err and "CVAPPS_OFFLINE=1" in err
    assert not (tmp_path / "yolov8n.pt").exists()


def _fake_weights_dir(monkeypatch, tmp_path: Path) -> Path:
    from cvapps.tasks import ultralytics_files

    wd = tmp_path / "weights"
    monkeypatch.setattr(ultralytics_files, "weights_dir", lambda: wd)
    monkeypatch.chdir(tmp_path)
    return wd


def test_offline_env_never_calls_the_downloader(tmp_path, monkeypatch):
    from cvapps.engine.load import load_model
    from cvapps.errors import CheckpointError
    from cvapps.tasks import ultralytics_files

    _fake_weights_dir(monkeypatch, tmp_path)
    calls = []
    monkeypatch.setattr(ultralytics_files, "download", lambda name, dest: calls.append(name))
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)
    monkeypatch.setenv("CVAPPS_OFFLINE", "1")
    assert ultralytics_files.online() is False
    with pytest.raises(CheckpointError, match="place the file at"):
        load_model("yolov8n.pt")
    assert calls == []


def test_stand_in_downloader_fetches_and_the_file_loads_safely(tmp_path, monkeypatch):
    from ultralytics import YOLO

    from cvapps.engine.load import load_model
    from cvapps.tasks import ultralytics_files

    wd = _fake_weights_dir(monkeypatch, tmp_path)
    fetched: list[tuple[str, Path]] = []

    def stand_in(name: str, dest: Path) -> Path:  # what ultralytics' downloader does, without network
        fetched.append((name, dest))
        YOLO("yolov8n.yaml").save(dest)  # a real ultralytics checkpoint, saved by its own code
        return dest

    trusts = []
    real_load = ultralytics_files.load_pickled_model

    def spy(path, trust=False):
        trusts.append(trust)
        return real_load(path, trust)

    monkeypatch.setattr(ultralytics_files, "download", stand_in)
    monkeypatch.setattr(ultralytics_files, "online", lambda: True)
    monkeypatch.setattr(ultralytics_files, "load_pickled_model", spy)
    loaded = load_model("yolov8n.pt", device="cpu", imgsz=64)
    assert fetched == [("yolov8n.pt", wd / "yolov8n.pt")] and (wd / "yolov8n.pt").is_file()
    assert trusts == [False]  # the same weights_only path, no full unpickle
    assert loaded.task.name == "ultralytics" and len(loaded.class_names) == 80
    det = loaded.predictor()(np.full((48, 64, 3), 90, np.uint8), conf=0.0, max_det=3).detections
    assert len(det) == 3 and det.masks is None
    load_model("yolov8n.pt", device="cpu", imgsz=64)  # now on disk: not fetched again
    assert len(fetched) == 1


def test_a_downloaded_file_that_needs_a_full_unpickle_is_refused(tmp_path, monkeypatch):
    from cvapps.engine.load import load_model
    from cvapps.errors import CheckpointError
    from cvapps.tasks import ultralytics_files

    _fake_weights_dir(monkeypatch, tmp_path)

    def hostile(name: str, dest: Path) -> Path:
        torch.save({"model": _NotAModule(), "train_args": {}}, dest)
        return dest

    monkeypatch.setattr(ultralytics_files, "download", hostile)
    monkeypatch.setattr(ultralytics_files, "online", lambda: True)
    with pytest.raises(CheckpointError, match="--trust-model"):
        load_model("yolov8n.pt", device="cpu")


def test_a_failed_download_is_the_one_line_error(tmp_path, monkeypatch):
    from cvapps.engine.load import load_model
    from cvapps.errors import CheckpointError
    from cvapps.tasks import ultralytics_files

    _fake_weights_dir(monkeypatch, tmp_path)

    def broken(name: str, dest: Path) -> Path:
        raise ConnectionError("no route")

    monkeypatch.setattr(ultralytics_files, "download", broken)
    monkeypatch.setattr(ultralytics_files, "online", lambda: True)
    with pytest.raises(CheckpointError, match="download failed.*place the file at") as info:
        load_model("yolo11n-seg.pt", device="cpu")
    assert "\n" not in str(info.value)


class _NotAModule:
    """A pickled object of a class outside the torch/ultralytics allowlist."""


def test_instance_masks_map_through_the_letterbox_to_original_pixels():
    """A prototype that is a disc in network space comes back as that disc in the original image
    (the letterbox's scale and 19 px of top padding undone), agreeing with ultralytics' own
    ``process_mask_native``."""
    from ultralytics.utils import ops

    from cvapps.data.letterbox import letterbox
    from cvapps.tasks.ultralytics_native import instance_masks

    h, w, imgsz = 90, 150, 96
    _, meta = letterbox(np.zeros((h, w, 3), np.uint8), imgsz)
    assert meta.pad_xy == (0, 19)  # square letterbox: the padding is top and bottom
    centre, radius = (75.0, 45.0), 30.0  # original pixels
    cx_in, cy_in = meta.boxes_to_input(torch.tensor([[*centre, *centre]]))[0, :2].tolist()
    ys, xs = torch.meshgrid(torch.arange(imgsz // 4) + 0.5, torch.arange(imgsz // 4) + 0.5, indexing="ij")
    dist = ((xs * 4 - cx_in) ** 2 + (ys * 4 - cy_in) ** 2).sqrt()
    proto = torch.stack([radius * meta.scale_xy[0] - dist, torch.zeros_like(dist)])  # (2, 24, 24)
    coeffs = torch.tensor([[1.0, 0.0]])
    boxes_orig = torch.tensor([[0.0, 0.0, w, h]])
    masks = instance_masks(proto, coeffs, meta.boxes_to_input(boxes_orig), meta)
    assert masks.shape == (1, h, w) and masks.dtype == torch.bool
    yy, xx = np.mgrid[:h, :w]
    disc = (xx + 0.5 - centre[0]) ** 2 + (yy + 0.5 - centre[1]) ** 2 <= radius ** 2
    got = masks[0].numpy()
    assert (got & disc).sum() / (got | disc).sum() > 0.95
    native = ops.process_mask_native(proto, coeffs, boxes_orig, (h, w))[0].bool().numpy()
    assert (got & native).sum() / (got | native).sum() > 0.95
