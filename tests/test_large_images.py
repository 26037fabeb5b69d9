"""Real imagery at full resolution (issue 27): datasets with only a val split in every layout,
sliced inference (merging across slice borders, stitched masks, tracking through slices),
``imgsz`` for cvapps checkpoints and training on tiles; all on small generated large scenes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_checkpoints import ROOT as REPO
from tiny_checkpoints import SHAPES, make_checkpoint
from torch import nn

import cvapps
import cvapps.engine.evaluate as evaluate_module
import cvapps.io.images as images_module
from cvapps.analytics import AnalyticsPredictor, make_analytics
from cvapps.cli import main as cli
from cvapps.data.convert import convert_dataset
from cvapps.data.scenes import SceneSpec, generate_scenes, render_scene
from cvapps.data.tiles import crop_tile
from cvapps.data.windows import Window
from cvapps.engine.input_size import set_imgsz
from cvapps.engine.predict import PredictOptions, Predictor
from cvapps.engine.slicing import SlicedPredictor, SliceOptions, slice_options
from cvapps.engine.train import train
from cvapps.errors import CvappsError
from cvapps.structures import Frame
from cvapps.structures.prediction import Detections, Prediction, SegmentationMask
from cvapps.tasks import config_from_dict, get_task, load_config
from cvapps.tasks.base import Task


@pytest.mark.parametrize("fmt", ["voc", "cvat", "labelme", "coco", "yolo"])
def test_val_only_dataset_in_every_layout(small_shapes: Path, tmp_path: Path, fmt: str) -> None:
    """`cvapps val` on a folder with only a val split: the layout-aware split check, not COCO/YOLO's."""
    out = tmp_path / fmt
    convert_dataset(small_shapes, fmt, out, splits=["val"])
    cfg = config_from_dict({"task": "yolo", "data": {"root": str(out), "imgsz": 96, "workers": 0},
                            "model": {"backbone": "tiny"}, "train": {"device": "cpu"}})
    splits = get_task("yolo").build_datasets(cfg, val_only=True)
    assert splits.train is None and len(splits.val) == 8
    assert splits.class_names == ["circle", "square", "triangle"]


# ---------------------------------------------------------------------------------------------
# sliced inference with a deterministic "detector": connected components of saturated pixels whose
# box is >= 10 network pixels a side, so objects shrunk by a whole-image letterbox are missed and
# the full-resolution answer is known exactly

class _BlobTask(Task):
    name = "blobs"
    parts = frozenset({"detections"})
    commands = frozenset({"detect"})
    tracks = True
    rect_stride = 32
    masks = False

    def postprocess(self, outputs: torch.Tensor, metas: list, **options: Any) -> list[Prediction]:
        out = []
        for x, meta in zip(outputs, metas):
            boxes, comps = _blobs(x)
            det = Detections(meta.boxes_to_original(torch.as_tensor(boxes).reshape(-1, 4)), [0.9] * len(boxes),
                             [0] * len(boxes))
            if self.masks:  # instance masks in original pixels
                comps = meta.crop_padding(torch.as_tensor(comps))[None, None].float()
                comps = F.interpolate(comps, size=meta.orig_hw, mode="nearest")[0, 0]
                det.masks = torch.stack([comps == k for k in range(1, len(boxes) + 1)]) if len(boxes) \
                    else torch.zeros((0, *meta.orig_hw), dtype=torch.bool)
            out.append(Prediction(det))
        return out


class _BlobSegTask(_BlobTask):
    name = "blobseg"
    parts = frozenset({"semantic"})

    def postprocess(self, outputs: torch.Tensor, metas: list, **options: Any) -> list[Prediction]:
        return [Prediction(semantic=SegmentationMask(m.crop_padding(torch.as_tensor(_saturated(x))).numpy().astype(np.uint8),
                                                     np.array([0.5, 0.9], np.float32)))
                for x, m in zip(outputs, metas)]


def _saturated(x: torch.Tensor) -> np.ndarray:
    rgb = (x * 255).round().numpy()
    return (rgb.max(0) - rgb.min(0)) > 60


def _blobs(x: torch.Tensor) -> tuple[list[list[float]], np.ndarray]:
    """Boxes xyxy (network px) of the saturated blobs >= 10 px a side, and their component map."""
    n, comps, stats, _ = cv2.connectedComponentsWithStats(_saturated(x).astype(np.uint8), connectivity=8)
    keep = [k for k in range(1, n) if stats[k, 2] >= 10 and stats[k, 3] >= 10]
    relabel = np.zeros(n, np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    boxes = [[float(stats[k, 0]), float(stats[k, 1]), float(stats[k, 0] + stats[k, 2]), float(stats[k, 1] + stats[k, 3])]
             for k in keep]
    return boxes, relabel[comps]


def _predictor(task: Task, imgsz: int = 320, batch: int = 8, prefetch: int = 2) -> Predictor:
    opts = PredictOptions(device="cpu", batch=batch, prefetch=prefetch, channels_last=False, fuse=False)
    return Predictor(task, _Forwards(), ["blob"], {"imgsz": imgsz, "resize": "letterbox", "in_channels": 3}, opts)


class _Forwards(nn.Module):
    """The identity, recording each forward's batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return x


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, list[dict]]:
    img, mask, objects = render_scene(np.random.default_rng(3), SceneSpec(width=1500, height=1000, objects=(30, 30)))
    img[mask == 0] = 128  # a grey ground: only the objects are saturated
    return img, objects


def _full_res(task: Task, image: np.ndarray) -> Prediction:
    """The detector at full resolution: the answer slicing must give."""
    return _predictor(task, imgsz=max(image.shape[:2]))(image)  # scale 1: no resize


def _box_set(det: Detections) -> list[tuple]:
    return sorted(tuple(round(v) for v in b) for b in det.boxes.tolist())


def test_sliced_finds_what_the_whole_image_misses_with_every_slice_batched(scene) -> None:
    image, _ = scene
    predictor = _predictor(_BlobTask(), batch=8)
    whole = predictor(image).detections
    sliced = SlicedPredictor(predictor, SliceOptions(size=320, overlap=0.2))
    n_windows = len(sliced.windows(image))
    predictor.model.batches.clear()
    found = sliced(image).detections
    truth = _full_res(_BlobTask(), image).detections
    assert len(whole) == 0 and len(truth) >= 25  # shrunk 4.7x, every object is under 10 px
    assert _box_set(found) == _box_set(truth)  # each object once, whole, in original pixels
    assert predictor.model.batches == [8] * (n_windows // 8) + ([n_windows % 8] if n_windows % 8 else [])


@pytest.mark.parametrize("merge", ["nms", "nmm"])
def test_an_object_on_a_slice_border_is_one_box(merge: str) -> None:
    """Squares straddling the vertical and horizontal borders of a 2x2 grid (and the corner)."""
    image = np.full((560, 560, 3), 120, np.uint8)  # slices [0, 320) and [240, 560) on each axis
    squares = [(300, 100, 330, 130), (100, 228, 130, 260), (305, 305, 337, 336), (230, 230, 262, 262),
               (10, 10, 40, 40)]
    for x0, y0, x1, y1 in squares:
        image[y0:y1, x0:x1] = (0, 0, 255)
    sliced = SlicedPredictor(_predictor(_BlobTask()), SliceOptions(size=320, overlap=0.2, merge=merge))
    assert len(sliced.windows(image)) == 4
    assert _box_set(sliced(image).detections) == sorted(squares)


def test_instance_masks_and_the_whole_image_pass(scene) -> None:
    image, _ = scene
    task = _BlobTask()
    task.masks = True
    sliced = SlicedPredictor(_predictor(task), SliceOptions(size=320, full=True))
    found, truth = sliced(image).detections, _full_res(task, image).detections
    assert _box_set(found) == _box_set(truth)
    assert found.masks.shape == (len(found), *image.shape[:2])
    order = [_box_set(truth).index(b) for b in (tuple(round(v) for v in b) for b in found.boxes.tolist())]
    truth_sorted = sorted(range(len(truth)), key=lambda i: tuple(round(v) for v in truth.boxes[i].tolist()))
    assert all(torch.equal(found.masks[i], truth.masks[truth_sorted[k]]) for i, k in enumerate(order))


def test_semantic_masks_are_stitched_exactly(scene) -> None:
    image, _ = scene
    sliced = SlicedPredictor(_predictor(_BlobSegTask()), SliceOptions(size=320, overlap=0.3))
    got = sliced(image).semantic
    assert np.array_equal(got.mask, _full_res(_BlobSegTask(), image).semantic.mask)
    assert got.scores is not None and got.scores[1] == pytest.approx(0.9)


def test_tracking_keeps_ids_across_slice_borders() -> None:
    """A square drives across the slices' borders; tracked on the merged boxes its id never changes."""
    frames = []
    for t in range(40):
        image = np.full((600, 900, 3), 120, np.uint8)
        x = 200 + 8 * t  # slices start at x = 0, 193, 387, 580: it crosses borders at 320, 387 and 513
        image[280:310, x:x + 30] = (255, 0, 0)
        image[40:70, 60:90] = (0, 255, 0)  # one that stays put
        frames.append(Frame.of_video(image, "clip.mp4", t, t / 24))
    analytics = make_analytics(["blob"], True, track="bytetrack")
    predictor = AnalyticsPredictor(SlicedPredictor(_predictor(_BlobTask(), batch=4), SliceOptions(size=320)), analytics)
    moving = []
    for _, pred in predictor.predict(frames, conf=0.1):
        det = pred.detections
        assert len(det) <= 2  # never a duplicate of a box cut by a border
        moving += [int(i) for i, b in zip(det.track_ids, det.boxes.tolist()) if b[1] > 200]
    assert len(moving) >= 36 and len(set(moving)) == 1


def test_slice_options_refuse_bad_values() -> None:
    for bad in ({"size": 8}, {"size": "big"}, {"overlap": 0.95}, {"merge": "wbf"}, {"merge_iou": 0}):
        with pytest.raises(CvappsError):
            SliceOptions(**bad)
    assert slice_options("auto").side(416) == 416 and slice_options(None) is None
    assert slice_options("640", overlap=0.1, merge="nmm") == SliceOptions(640, 0.1, "nmm")


# ---------------------------------------------------------------------------------------------
# the API and CLI: --slice, --imgsz on a cvapps checkpoint

@pytest.fixture(scope="module")
def yolo_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("li") / "yolo.pt", "yolo_shapes.yaml", ["data.imgsz=160"], SHAPES)


def test_cli_and_api_slice_a_large_image(yolo_ckpt: Path, tmp_path: Path, scene, capsys) -> None:
    image, _ = scene
    cv2.imwrite(str(tmp_path / "scene.png"), image)
    model = cvapps.load(yolo_ckpt, device="cpu", slice="auto")
    assert isinstance(model.predictor, SlicedPredictor) and model.predictor.size == 160
    sliced = model.predict(image, conf=0.001)[0]
    whole = model.predict(image, conf=0.001, slice=None)[0]
    assert model.predictor.predictor.count == len(model.predictor.windows(image)) + 1  # the slices, then one whole frame
    boxes = sliced.boxes
    assert len(boxes) and boxes[:, 2].max() <= 1500 and boxes[:, 3].max() <= 1000 and boxes[:, 0].min() >= 0
    assert boxes[:, 2].max() > 1300  # boxes from the right-most slices, in original pixels
    assert len(whole.boxes) != len(boxes)
    out = tmp_path / "out"
    assert cli(["detect", str(tmp_path / "scene.png"), "--model", str(yolo_ckpt), "--device", "cpu", "--out", str(out),
                "--slice", "320", "--slice-merge", "nmm", "--slice-full", "--conf", "0.001", "--save-json"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert results and max(r["bbox"][0] + r["bbox"][2] for r in results) <= 1500.01


def test_imgsz_for_cvapps_checkpoints_and_refusals(yolo_ckpt: Path, tmp_path: Path, capsys) -> None:
    model = cvapps.load(yolo_ckpt, device="cpu", imgsz=320)
    assert model.predictor.imgsz == 320
    _, meta = model.predictor.task.preprocess(np.zeros((500, 1000, 3), np.uint8), 320, rect=model.predictor.rect)
    assert meta.input_hw == (160, 320)  # rect letterbox at the new size
    with pytest.raises(CvappsError, match="multiple of 32"):
        cvapps.load(yolo_ckpt, device="cpu", imgsz=300)
    fixed = SimpleNamespace(preprocessing={"imgsz": 160, "fixed_size": True}, source="m.onnx", runtime="onnxruntime",
                            task=get_task("yolo"))
    with pytest.raises(CvappsError, match="export size 160") as err:
        set_imgsz(fixed, 320)
    assert "\n" not in str(err.value)
    set_imgsz(fixed, 160)  # its own size is fine
    classifier = make_checkpoint(tmp_path / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    assert cli(["classify", str(tmp_path), "--model", str(classifier), "--slice", "64", "--out", str(tmp_path / "o")]) == 1
    assert "labels whole images" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# training on tiles

def test_crop_tile_clips_boxes_keeps_mostly_inside_ones_and_crops_the_mask() -> None:
    image = np.arange(400 * 600 * 3, dtype=np.uint32).reshape(400, 600, 3).astype(np.uint8)
    mask = (np.arange(400 * 600).reshape(400, 600) % 7).astype(np.uint8)
    boxes = np.array([[10, 10, 50, 50], [305, 100, 345, 140], [290, 200, 330, 240], [400, 10, 440, 40]], np.float32)
    tile, kept, labels, cropped = crop_tile(image, boxes, np.array([0, 1, 2, 0]), Window(0, 0, 320, 320), mask)
    assert tile.shape == (320, 320, 3) and np.array_equal(cropped, mask[:320, :320])
    assert labels.tolist() == [0, 2]  # the second is 3/8 inside, the third 3/4, the last out
    assert np.allclose(kept, [[10, 10, 50, 50], [290, 200, 320, 240]], atol=1e-3)  # clipped to the tile


def test_training_on_tiles_validates_on_whole_images_in_slices(tmp_path: Path, monkeypatch) -> None:
    root = generate_scenes(tmp_path / "scenes", SceneSpec(n_train=2, n_val=1, width=640, height=480, objects=(20, 30)))
    cfg = load_config(REPO / "configs" / "yolo_shapes.yaml",
                      [f"data.root={root}", "data.tile=160", "data.tile_overlap=0.2", "train.epochs=1",
                       "train.batch=8", "train.device=cpu", "train.val_every=1", f"out={tmp_path / 'run'}"])
    splits = get_task("yolo").build_datasets(cfg)
    assert len(splits.train) == 2 * 5 * 4  # 640x480 -> 5 x 4 tiles of 160 (overlap >= 32 px)
    image, target = splits.train[0]
    assert image.shape == (3, 160, 160) and len(target["boxes"]) and float(target["boxes"].max()) <= 160
    windows: list[int] = []

    class Spy(SlicedPredictor):
        def windows(self, image: np.ndarray):
            out = super().windows(image)
            windows.append(len(out))
            return out

    monkeypatch.setattr(evaluate_module, "SlicedPredictor", Spy)
    run = train(cfg, progress=False, log=lambda *_: None)
    assert windows == [20] and run.best is not None and "val/map50" in run.history[-1]


def test_allow_large_reads_an_image_over_the_pixel_limit(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), np.full((100, 120, 3), 90, np.uint8))
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 5000)  # a 100 x 120 image stands for a 10,000 px one
    monkeypatch.delenv(images_module.ALLOW_LARGE_ENV, raising=False)
    with pytest.raises(CvappsError, match="pass --allow-large") as err:
        images_module.read_image(path)
    assert "\n" not in str(err.value)
    with images_module.large_images_allowed(True):
        assert images_module.read_image(path).shape == (100, 120, 3)
