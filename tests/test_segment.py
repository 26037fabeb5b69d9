"""FCN segmentation: head geometry and init, data checks, metrics, COCO RLE export, CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cvapps.backbones import available_backbones, build_backbone
from cvapps.cli import main as cli_main
from cvapps.data.synth import SynthSpec, generate_shapes
from cvapps.errors import CvappsError, DataError
from cvapps.heads.fcn import FCN8sHead, bilinear_kernel, bilinear_upsampler, upsample_crop
from cvapps.formats.coco import dumps, load_results
from cvapps.formats.names import output_relpath
from cvapps.metrics.segmentation import segmentation_metrics
from cvapps.structures import Frame, SegmentationMask
from cvapps.tasks.segment import FCN, TASK, SegmentConfig

# pycocotools' decode trips a numpy-2 copy= DeprecationWarning; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
SMALL = SynthSpec(n_train=8, n_val=4, imgsz=64, n_crops_per_class=(1, 1), video_frames=3, video_size=(80, 64))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("seg") / "shapes", SMALL, progress=False)


def _cfg(root: Path, out: Path, **extra) -> SegmentConfig:
    raw = {"task": "segment", "model": {"backbone": "tiny"}, "data": {"root": str(root), "imgsz": 64, "workers": 0},
           "train": {"epochs": 1, "batch": 4, "device": "cpu"}, "out": str(out)}
    for key, value in extra.items():
        section, name = key.split("__")
        raw[section][name] = value
    return SegmentConfig.model_validate(raw)


# ------------------------------------------------------------------------------------- head geometry
def _backbones_with_strides():
    params = []
    for name in available_backbones():
        if name in ("lenet", "mnist_convnet"):
            marks = pytest.mark.skip(reason=f"{name} has a single feature map, no stride 8/16/32 features for FCN-8s")
            params.append(pytest.param(name, marks=marks))
        else:
            params.append(name)
    return params


@pytest.mark.parametrize("name", _backbones_with_strides())
def test_output_size_equals_input_size(name: str) -> None:
    backbone = build_backbone(name)
    assert all(backbone.feature_by_stride(s) for s in (8, 16, 32)), f"{name} lacks stride 8/16/32"
    model = FCN(backbone, num_classes=3).eval()
    with torch.no_grad():
        for hw in ((250, 333), (97, 131)):
            out = model(torch.rand(1, 3, *hw))
            assert out.shape == (1, 3, *hw)


def test_single_map_backbones_are_refused_clearly() -> None:
    backbone = build_backbone("mnist_convnet", in_channels=1, check_size=32)
    with pytest.raises(CvappsError, match=r"FCN segmentation needs backbone features at strides \[8, 16, 32\]"):
        FCN(backbone, 3, in_channels=1)


def test_bilinear_kernel_sums_to_one_per_output_pixel() -> None:
    w = bilinear_kernel(2, 4)
    assert w.shape == (2, 2, 4, 4)
    assert torch.all(w[0, 1] == 0) and torch.all(w[1, 0] == 0)  # each class map upsampled on its own
    # stride-2 phases: the taps landing on one output pixel sum to 1
    for dy in range(2):
        for dx in range(2):
            assert w[0, 0, dy::2, dx::2].sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("factor", [2, 8])
def test_transposed_conv_starts_as_bilinear_upsampling(factor: int) -> None:
    up = bilinear_upsampler(3, factor)
    assert isinstance(up, torch.nn.ConvTranspose2d) and up.weight.requires_grad
    with torch.no_grad():
        const = upsample_crop(up, torch.full((1, 3, 6, 7), 2.5))
        assert const.shape[-2:] == (6 * factor, 7 * factor)
        m = factor  # border pixels see only part of the kernel
        assert torch.allclose(const[..., m:-m, m:-m], torch.full_like(const[..., m:-m, m:-m], 2.5))
        x = torch.randn(1, 3, 6, 7)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert torch.allclose(upsample_crop(up, x)[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5)


def test_fcn_head_constant_scores_stay_constant() -> None:
    head = FCN8sHead((4, 4, 4), num_classes=2)
    with torch.no_grad():
        head.score32.weight.zero_()
        head.score32.bias.copy_(torch.tensor([1.0, -3.0]))
        out = head((torch.rand(1, 4, 32, 32), torch.rand(1, 4, 16, 16), torch.rand(1, 4, 8, 8)), (250, 256))
    assert out.shape == (1, 2, 250, 256)
    # Away from the borders, where the cascaded kernels see the map's edge (one stride-32 cell
    # plus the kernel overhang of each stage), the fused scores equal the constant.
    inner = out[..., 48:-48, 48:-48]
    assert torch.allclose(inner[:, 0], torch.ones_like(inner[:, 0]))
    assert torch.allclose(inner[:, 1], torch.full_like(inner[:, 1], -3.0))


def test_losses_and_aux_head() -> None:
    model = FCN(build_backbone("tiny"), 3, aux=True, aux_weight=0.5).train()
    targets = torch.randint(0, 3, (2, 64, 64))
    targets[:, :5] = 255
    losses = model(torch.rand(2, 3, 64, 64), targets)
    assert set(losses) == {"loss_seg", "loss_aux"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.up8.weight.grad is not None and model.aux[0].weight.grad is not None
    # a batch with only ignored pixels gives 0, not NaN
    ignored = model(torch.rand(1, 3, 64, 64), torch.full((1, 64, 64), 255))
    assert all(v.item() == 0.0 for v in ignored.values())
    model.eval()
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


# ---------------------------------------------------------------------------------------------- data
def test_dataset_from_masks_and_from_coco(shapes: Path, tmp_path: Path) -> None:
    splits = TASK.build_datasets(_cfg(shapes, tmp_path / "o"))
    assert splits.class_names == ["background", "circle", "square", "triangle"]
    assert splits.val_extra.category_ids == [0, 1, 2, 3]
    assert len(splits.train) == 8 and len(splits.val) == 4
    image, mask = splits.val[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert mask.shape == (64, 64) and mask.dtype == torch.int64
    png_mask = splits.val.load(0)[1]

    # the same dataset without masks/: rasterised from the COCO polygons
    import shutil

    coco_root = tmp_path / "coco"
    shutil.copytree(shapes / "images", coco_root / "images")
    shutil.copytree(shapes / "annotations", coco_root / "annotations")
    splits2 = TASK.build_datasets(_cfg(coco_root, tmp_path / "o2"))
    assert splits2.class_names == splits.class_names and len(splits2.val) == 4
    raster = splits2.val.load(0)[1]
    known = png_mask != 255  # synth draws a 255 band on the boundaries
    assert (raster[known] == png_mask[known]).mean() > 0.99
    assert set(np.unique(raster)) <= {0, 1, 2, 3}


def test_bad_masks_are_reported_and_skipped(shapes: Path, tmp_path: Path, capsys) -> None:
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(shapes, root)
    masks = root / "masks" / "train"
    cv2.imwrite(str(masks / "shapes_000001.png"), np.zeros((32, 48), np.uint8))       # wrong size
    values = np.zeros((64, 64), np.uint8)
    values[3, 3] = 7
    cv2.imwrite(str(masks / "shapes_000002.png"), values)                               # value >= 4
    cv2.imwrite(str(masks / "shapes_000003.png"), np.zeros((64, 64, 3), np.uint8))    # colour
    (masks / "shapes_000004.png").unlink()                                             # missing
    (masks / "shapes_000005.png").write_bytes(b"not a png")                            # corrupt
    splits = TASK.build_datasets(_cfg(root, tmp_path / "o"))
    err = capsys.readouterr().err
    assert len(splits.train) == 3
    assert "shapes_000001.png: mask size 48x32 differs from its image 64x64" in err
    assert "shapes_000002.png: mask values 7 >= class count 4" in err
    assert "shapes_000003.png: mask must be single-channel" in err
    assert "shapes_000004.jpg: no mask shapes_000004.png" in err
    assert "shapes_000005.png: unreadable or corrupt mask" in err
    assert len(splits.val_extra.skipped) == 5


def test_class_names_required_without_coco(shapes: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "nococo"
    shutil.copytree(shapes / "images", root / "images")
    shutil.copytree(shapes / "masks", root / "masks")
    with pytest.raises(CvappsError, match="set data.names"):
        TASK.build_datasets(_cfg(root, tmp_path / "o"))
    splits = TASK.build_datasets(_cfg(root, tmp_path / "o", data__names=["bg", "a", "b", "c"]))
    assert splits.class_names == ["bg", "a", "b", "c"] and splits.val_extra.category_ids == [0, 1, 2, 3]
    # too few names: the masks holding class 3 are reported and skipped, the others kept
    splits = TASK.build_datasets(_cfg(root, tmp_path / "o", data__names=["bg", "a", "b"]))
    has3 = {str(p) for p in (root / "masks").rglob("*.png") if 3 in np.unique(cv2.imread(str(p), cv2.IMREAD_UNCHANGED))}
    assert has3 and {p for p, _ in splits.val_extra.skipped} == has3
    assert all(reason.startswith("mask values 3 >= class count 3") for _, reason in splits.val_extra.skipped)
    assert len(splits.train) + len(splits.val) == 12 - len(has3)


def test_segmentation_metrics() -> None:
    # rows: true, cols: predicted
    m = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    metrics = segmentation_metrics(m, ["bg", "a", "never"])
    assert metrics["iou/bg"] == pytest.approx(8 / 11)
    assert metrics["iou/a"] == pytest.approx(3 / 6)
    assert np.isnan(metrics["iou/never"])  # absent everywhere: no IoU, not in the mean
    assert metrics["miou"] == pytest.approx((8 / 11 + 0.5) / 2)
    assert metrics["pixel_acc"] == pytest.approx(11 / 14)


def test_postprocess_maps_to_original_pixels() -> None:
    from cvapps.data.letterbox import letterbox

    image = np.zeros((50, 100, 3), np.uint8)
    _, meta = letterbox(image, 64)
    logits = torch.zeros(1, 3, 64, 64)
    logits[0, 2, :, 32:] = 5.0  # right half of the network input: class 2
    (pred,) = TASK.postprocess(logits, [meta])
    pred = pred.semantic
    assert pred.mask.shape == (50, 100) and pred.mask.dtype == np.uint8
    assert (pred.mask[:, 52:] == 2).all() and (pred.mask[:, :48] == 0).all()
    assert pred.scores[2] > 0.9 and pred.scores[1] == 0.0


# ------------------------------------------------------------------------------------------ COCO RLE
def _gt(h: int, w: int, n_images: int) -> COCO:
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1, "height": h, "width": w, "file_name": f"{i}.jpg"} for i in range(n_images)],
                    "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}], "annotations": []}
    coco.createIndex()
    return coco


def test_coco_json_round_trips_through_pycocotools(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (37, 53)).astype(np.uint8), np.zeros((37, 53), np.uint8)]
    masks[1][10:20, 5:9] = 2
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    entries = []
    for i, m in enumerate(masks):
        entries += SegmentationMask(m, scores).to_coco(i + 1, [0, 5, 9])
    assert len(entries) == 3  # image 1: classes 1, 2; image 2: class 2 only
    assert all(isinstance(e["segmentation"]["counts"], str) for e in entries)
    path = tmp_path / "predictions.json"
    path.write_text(dumps(entries))
    res = _gt(37, 53, 2).loadRes(str(path))
    assert len(res.getAnnIds()) == 3
    for ann in res.loadAnns(res.getAnnIds()):
        cls = {5: 1, 9: 2}[ann["category_id"]]
        decoded = mask_utils.decode(ann["segmentation"])
        assert np.array_equal(decoded.astype(bool), masks[ann["image_id"] - 1] == cls)
        assert ann["score"] == pytest.approx(scores[cls], abs=1e-5)
        assert ann["area"] == (masks[ann["image_id"] - 1] == cls).sum()


def test_nothing_predicted_still_loads_in_pycocotools(tmp_path: Path) -> None:
    """All-background predictions: the sink writes a score-0 empty placeholder that loadRes takes."""
    from pycocotools.cocoeval import COCOeval

    from cvapps.io.sinks import CocoSink
    from cvapps.structures import Frame, Prediction

    path = tmp_path / "predictions.json"
    sink = CocoSink(tmp_path / "predictions_coco.json", ["background", "a", "b"], [0, 5, 9], results_path=path)
    nothing = Prediction(semantic=SegmentationMask(np.zeros((8, 8), np.uint8)))
    sink.write(Frame(np.zeros((8, 8, 3), np.uint8), "1.png", 0), nothing)
    sink.close()
    entries = json.loads(path.read_text())
    assert len(entries) == 1 and entries[0]["score"] == 0.0
    gt = _gt(8, 8, 1)
    res = gt.loadRes(str(path))
    (ann,) = res.loadAnns(res.getAnnIds())
    assert ann["area"] == 0 and not mask_utils.decode(ann["segmentation"]).any()
    ev = COCOeval(gt, res, "segm")
    ev.evaluate()
    ev.accumulate()
    # The same AP as an empty result list (read through load_results, as pycocotools cannot).
    empty = COCOeval(gt, load_results(gt, []), "segm")
    empty.evaluate()
    empty.accumulate()
    assert np.array_equal(ev.eval["precision"], empty.eval["precision"])
    with pytest.raises(IndexError):  # why the placeholder exists: pycocotools reads anns[0]
        gt.loadRes([])


def test_output_names() -> None:
    assert output_relpath("/data/a/photo.JPG", None, ".png").as_posix() == "photo.png"
    assert output_relpath("/data/a/photo.JPG", "/data", ".png").as_posix() == "a/photo.png"
    pixels = np.zeros((1, 1, 3), np.uint8)
    assert output_relpath(Frame.of_video(pixels, "/v/clip.mp4", 123, 0.0), None, ".png").as_posix() == "clip_000123.png"
    assert output_relpath(Frame.of_video(pixels, "webcam0", 7, 0.0)).as_posix() == "webcam0_000007.jpg"


# --------------------------------------------------------------------------------------- end to end
def test_train_val_segment_end_to_end(shapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", str(ROOT / "configs" / "segment_shapes.yaml"), f"data.root={shapes}", "data.imgsz=64",
            "train.epochs=2", "train.batch=4", "train.device=cpu", "model.aux=true", f"out={out}", "--quiet"]
    assert cli_main(argv) == 0
    assert (out / "best.pt").is_file() and (out / "metrics.csv").is_file() and (out / "metrics.png").is_file()
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/miou", "val/pixel_acc", "val/iou/circle", "train/loss_aux"} <= set(header)
    capsys.readouterr()

    assert cli_main(["val", str(out / "best.pt"), f"data.root={shapes}"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"miou", "pixel_acc", "iou/background", "iou/triangle"} <= set(metrics)

    images = tmp_path / "in"
    images.mkdir()
    odd = cv2.resize(cv2.imread(str(shapes / "images" / "val" / "shapes_000000.jpg")), (77, 51))
    cv2.imwrite(str(images / "odd.png"), odd)
    for p in sorted((shapes / "images" / "val").glob("*.jpg"))[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "broken.jpg").write_bytes(b"nope")
    pred = tmp_path / "pred"
    assert cli_main(["segment", str(images), "--model", str(out / "best.pt"), "--out", str(pred),
                     "--save-json", "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert "processed 3 images" in printed.out and "broken.jpg" in printed.err
    stems = ["odd", "shapes_000000", "shapes_000001"]
    assert sorted(p.stem for p in (pred / "overlays").iterdir()) == stems
    assert sorted(p.name for p in (pred / "masks").iterdir()) == [f"{s}.png" for s in stems]
    odd_mask = cv2.imread(str(pred / "masks" / "odd.png"), cv2.IMREAD_UNCHANGED)
    assert odd_mask.shape == (51, 77) and odd_mask.max() < 4
    entries = json.loads((pred / "predictions.json").read_text())
    names = {im["id"]: im["file_name"] for im in json.loads((pred / "predictions_coco.json").read_text())["images"]}
    for e in entries:
        e["file_name"] = names[e["image_id"]]
    by_file: dict[str, list] = {}
    for e in entries:
        by_file.setdefault(e["file_name"], []).append(e)
        assert e["category_id"] in (1, 2, 3) and 0 <= e["score"] <= 1
    for name, group in by_file.items():  # the RLEs decode back to the written mask PNGs exactly
        mask = cv2.imread(str(pred / "masks" / f"{Path(name).stem}.png"), cv2.IMREAD_UNCHANGED)
        for e in group:
            assert np.array_equal(mask_utils.decode(e["segmentation"]).astype(bool), mask == e["category_id"])
    # (a run that predicts nothing anywhere writes one score-0 empty placeholder: not a class present)
    present = {(e["file_name"], e["category_id"]) for e in entries if mask_utils.area(e["segmentation"]) > 0}
    for s in stems:
        mask = cv2.imread(str(pred / "masks" / f"{s}.png"), cv2.IMREAD_UNCHANGED)
        assert {(f"{s}.png" if s == "odd" else f"{s}.jpg", int(c)) for c in np.unique(mask) if c} == \
            {p for p in present if Path(p[0]).stem == s}

    # the shipped val images line up with the GT image ids, so pycocotools takes the file
    gt = COCO(str(shapes / "annotations" / "val.json"))
    val_pred = tmp_path / "pred_val"
    assert cli_main(["segment", str(shapes / "images" / "val"), "--model", str(out / "best.pt"),
                     "--out", str(val_pred), "--save-json", "--quiet", "--no-overlay"]) == 0
    load_results(gt, val_pred / "predictions.json")
    # with --coco-gt the ids are the ground truth's, matched by file_name
    assert cli_main(["segment", str(shapes / "images" / "val"), "--model", str(out / "best.pt"), "--out",
                     str(val_pred), "--coco-gt", str(shapes / "annotations" / "val.json"), "--quiet"]) == 0
    written = json.loads((val_pred / "predictions_coco.json").read_text())["images"]
    assert {im["file_name"]: im["id"] for im in written} == \
        {im["file_name"]: im["id"] for im in gt.dataset["images"]}

    # video: an annotated mp4 + the COCO pair by default; with --save-images masks named after the video and frame
    vid = tmp_path / "vid"
    assert cli_main(["segment", str(shapes / "video" / "shapes.mp4"), "--model", str(out / "best.pt"),
                     "--out", str(vid), "--quiet"]) == 0
    assert sorted(p.name for p in vid.iterdir()) == ["predictions.json", "predictions_coco.json", "shapes.mp4"]
    assert cli_main(["segment", str(shapes / "video" / "shapes.mp4"), "--model", str(out / "best.pt"),
                     "--out", str(vid), "--quiet", "--save-images"]) == 0
    assert sorted(p.name for p in (vid / "masks").iterdir()) == [f"shapes_{i:06d}.png" for i in range(3)]


def test_summary_shows_transposed_convs(capsys) -> None:
    assert cli_main(["summary", str(ROOT / "configs" / "segment_shapes.yaml")]) == 0
    table = capsys.readouterr().out
    assert table.count("ConvTranspose2d") >= 3


def test_a_num_classes_the_dataset_does_not_have_is_a_data_error(tmp_path: Path) -> None:
    """The same error type and message as detection's (tests/test_detection_data.py)."""
    cfg = _cfg(tmp_path, tmp_path / "out", model__num_classes=5)
    with pytest.raises(DataError, match=r"^model\.num_classes is 5 but the dataset has 4 classes "
                                        r"\['background', 'a', 'b', 'c'\]: set it to 4 or leave it out$"):
        TASK.build_model(cfg, ["background", "a", "b", "c"])
