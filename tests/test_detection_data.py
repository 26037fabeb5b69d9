"""Detection data: every `data check` rule, the dataset items, COCO <-> YOLO conversion, and
letterbox/resize coordinates mapping back to the original image."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cvapps.cli import main as cli
from cvapps.data.augment import SamplePipeline
from cvapps.data.check import check_dataset
from cvapps.formats.coco_checks import load_coco_split
from cvapps.formats.yolo import load_yolo_split
from cvapps.data.convert import coco_to_yolo
from cvapps.data.detection import DetectionDataset
from cvapps.data.letterbox import letterbox
from cvapps.errors import DataError
from cvapps.tasks import get_task, load_config
from cvapps.tasks.detection_common import DetectionTask


def _image(path: Path, w: int = 64, h: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


def _coco(root: Path, split: str, data: dict) -> Path:
    path = root / "annotations" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A COCO dataset with one instance of every problem the checker knows."""
    root = tmp_path / "messy"
    img_dir = root / "images" / "train"
    for name in ("a.jpg", "b.jpg", "dup.jpg"):
        _image(img_dir / name)
    (img_dir / "broken.jpg").write_bytes(b"not a jpeg at all")
    _image(tmp_path / "outside.jpg")  # exists, but outside ROOT
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},
        {"id": 3, "file_name": "missing.jpg", "width": 64, "height": 48},
        {"id": 4, "file_name": "broken.jpg", "width": 64, "height": 48},
        {"id": 5, "file_name": "../../../outside.jpg", "width": 64, "height": 48},
        {"id": 6, "file_name": str(tmp_path / "outside.jpg"), "width": 64, "height": 48},
        {"id": 1, "file_name": "dup.jpg", "width": 64, "height": 48},   # duplicate image id
        {"file_name": "no_id.jpg"},                                       # malformed
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20]},     # fine
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 30, 30, 30]},     # outside -> clamped
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [10, 10, 0, 5]},       # zero area -> dropped
        {"id": 4, "image_id": 2, "category_id": 7, "bbox": [70, 10, 5, 5]},       # entirely outside -> zero area
        {"id": 5, "image_id": 2, "category_id": 99, "bbox": [1, 1, 5, 5]},        # unknown category
        {"id": 5, "image_id": 2, "category_id": 3, "bbox": [2, 2, 8, 8]},         # duplicate ann id -> renumbered
        {"id": 7, "image_id": 42, "category_id": 3, "bbox": [2, 2, 8, 8]},        # unknown image
        {"id": 8, "image_id": 2, "category_id": 3, "bbox": [2, 2, 8]},            # malformed bbox
        {"id": 9, "image_id": 4, "category_id": 3, "bbox": [2, 2, 8, 8]},         # on the unreadable image
    ]
    cats = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]
    _coco(root, "train", {"images": images, "annotations": anns, "categories": cats})
    return root


def test_every_check_rule_is_reported(messy: Path) -> None:
    (report,) = check_dataset(messy, ["train"])
    c = report.counts
    assert c["missing_images"] == 1
    assert c["unreadable_images"] == 1
    assert c["escaping_paths"] == 2
    assert c["clamped_boxes"] == 1
    assert c["zero_area_boxes"] == 2
    assert c["unknown_categories"] == 1
    assert c["unknown_image_ids"] == 1
    assert c["duplicate_image_ids"] == 1
    assert c["duplicate_annotation_ids"] == 1
    assert c["malformed_entries"] == 2
    assert c["images"] == 2 and c["boxes"] == 3   # a.jpg (2 boxes) and b.jpg (1 renumbered box)
    assert not report.ok
    assert any("outside.jpg" in p and p.startswith("escaping_paths") for p in report.problems)
    assert "missing image files" in report.summary()


def test_loader_applies_rules_and_never_crashes(messy: Path, capsys) -> None:
    split = load_coco_split(messy, "train")
    # sorted category ids: 3 -> index 0 ("dog"), 7 -> index 1 ("cat")
    assert split.category_ids == [3, 7] and split.class_names == ["dog", "cat"]
    by_name = {r.file_name: r for r in split.records}
    # without decoding, the unreadable file is only found when read: it stays a record here
    assert set(by_name) == {"a.jpg", "b.jpg", "broken.jpg"}
    a = by_name["a.jpg"]
    np.testing.assert_allclose(a.boxes, [[10, 10, 30, 30], [50, 30, 64, 48]])
    assert a.labels.tolist() == [1, 0]
    ann_ids = [x["id"] for x in split.gt["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    ds = DetectionDataset.from_root(messy, "train", imgsz=64)
    err = capsys.readouterr().err
    assert "data check train:" in err and "missing image files" in err
    items = [ds[i] for i in range(len(ds))]
    assert sum(x is None for x in items) == 1          # broken.jpg: skipped, reported
    assert "broken.jpg" in capsys.readouterr().err
    images, targets = DetectionTask().collate(items)
    assert images.shape == (2, 3, 64, 64) and len(targets) == 2


def test_data_check_cli(messy: Path, small_shapes: Path, capsys) -> None:
    assert cli(["data", "check", str(messy)]) == 1
    out = capsys.readouterr().out
    assert "train: 2 images" in out and "unreadable_images:" in out
    assert cli(["data", "check", str(small_shapes)]) == 0
    assert "no problems" in capsys.readouterr().out


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"images": [], "annotations": []}', "missing the 'categories'"),
    ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
])
def test_malformed_json_is_one_line_error(tmp_path: Path, content: str, words: str, capsys) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "annotations" / "train.json").write_text(content)
    with pytest.raises(DataError, match=words) as exc:
        load_coco_split(tmp_path, "train")
    assert "\n" not in str(exc.value)
    assert cli(["data", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_yolo_rules(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    _image(root / "images" / "train" / "a.jpg", 100, 50)
    _image(root / "images" / "train" / "b.jpg", 100, 50)
    (root / "images" / "train" / "c.jpg").write_bytes(b"garbage")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"        # fine: x 40..60, y 15..35
        "1 0.95 0.5 0.2 0.2\n"       # sticks out right -> clamped
        "5 0.5 0.5 0.1 0.1\n"        # no such class
        "1 0.5 0.5 0 0.1\n"          # zero area
        "1 0.5 oops\n")              # malformed
    (root / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    split = load_yolo_split(root, "train")
    c = split.report.counts
    assert (c["clamped_boxes"], c["unknown_categories"], c["zero_area_boxes"], c["malformed_entries"],
            c["unreadable_images"]) == (1, 1, 1, 1, 1)
    a = split.records[0]
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [85, 20, 100, 30]], atol=1e-4)
    assert split.records[1].boxes.shape == (0, 4)   # b.jpg: no label file = no objects
    assert split.class_names == ["cat", "dog"] and split.category_ids == [1, 2]


def test_dataset_items_and_augmented_boxes_dropped(small_shapes: Path) -> None:
    ds = DetectionDataset.from_root(small_shapes, "train", imgsz=64)
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
    assert target["labels"].dtype == torch.int64 and target["image_id"] == ds.records[0].image_id
    assert len(target["boxes"]) == len(ds.records[0].boxes) > 0
    np.testing.assert_allclose(target["meta"].boxes_to_original(target["boxes"]).numpy(), ds.records[0].boxes, atol=0.05)
    # shifting the image right by its width pushes every box out: all are dropped with their labels
    pushed = DetectionDataset.from_root(small_shapes, "train", imgsz=64,
                                        augment=[{"Affine": {"translate_px": {"x": 64, "y": 0}, "p": 1.0}}])
    _, t = pushed[0]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    flipped = DetectionDataset.from_root(small_shapes, "train", imgsz=64, augment=[{"HorizontalFlip": {"p": 1.0}}])
    _, f = flipped[0]
    expect = target["boxes"].clone()
    expect[:, [0, 2]] = 64 - target["boxes"][:, [2, 0]]
    torch.testing.assert_close(f["boxes"], expect, atol=1e-3, rtol=0)


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
@pytest.mark.parametrize("hw", [(100, 200), (240, 90), (64, 64)])
def test_letterbox_coordinates_map_back(mode: str, hw: tuple[int, int]) -> None:
    h, w = hw
    image = np.zeros((h, w, 3), np.uint8)
    box = np.array([[0.2 * w, 0.3 * h, 0.7 * w, 0.9 * h]], np.float32)
    x1, y1, x2, y2 = box[0].round().astype(int)
    image[y1:y2, x1:x2] = 255
    out = SamplePipeline(128, mode)(image, boxes=box, labels=np.array([0]))
    meta, net = out["meta"], out["boxes"]
    # the mapped box encloses exactly the white block in the network input (up to resampling)
    inp = out["image"][0].numpy()
    bx1, by1, bx2, by2 = net[0].round().int().tolist()
    assert inp[by1 + 1:by2 - 1, bx1 + 1:bx2 - 1].min() > 200
    assert inp[:by1 - 1].max(initial=0) < 130 and inp[by2 + 1:].max(initial=0) < 130
    # and maps back to the original pixels
    np.testing.assert_allclose(meta.boxes_to_original(net).numpy(), box, atol=1e-3)
    # a score map in network pixels maps back onto the original image size
    score = torch.from_numpy(inp.astype(np.float32) / 255)
    back = meta.map_to_original(score).numpy()
    assert back.shape == (h, w)
    assert back[y1 + 2:y2 - 2, x1 + 2:x2 - 2].min() > 0.8 and back[:max(0, y1 - 2)].max(initial=0) < 0.2
    img2, meta2 = letterbox(image, 128, mode)
    assert img2.shape == (128, 128, 3) and meta2 == meta


def test_convert_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for i in range(3):
        _image(root / "images" / "train" / f"im{i}.jpg", 80, 60)
    anns = [{"id": 1, "image_id": 10, "category_id": 5, "bbox": [4.5, 6.25, 20, 10]},
            {"id": 2, "image_id": 10, "category_id": 9, "bbox": [30, 20, 40, 30]},
            {"id": 3, "image_id": 12, "category_id": 9, "bbox": [0, 0, 80, 60]}]
    images = [{"id": 10 + i, "file_name": f"im{i}.jpg", "width": 80, "height": 60} for i in range(3)]
    _coco(root, "train", {"images": images, "annotations": anns,
                          "categories": [{"id": 9, "name": "b"}, {"id": 5, "name": "a"}]})
    yolo = tmp_path / "yolo"
    coco_to_yolo(root, yolo)
    assert (yolo / "images" / "train" / "im0.jpg").is_file()
    assert (yolo / "labels" / "train" / "im0.txt").read_text().splitlines()[0].startswith("0 ")  # id 5 -> index 0
    with pytest.raises(DataError, match="--overwrite"):
        coco_to_yolo(root, yolo)
    back = tmp_path / "back"
    assert cli(["data", "convert", str(yolo), "--to", "coco", "--out", str(back)]) == 0
    data = json.loads((back / "annotations" / "train.json").read_text())
    assert {c["id"]: c["name"] for c in data["categories"]} == {5: "a", 9: "b"}
    name_of = {im["id"]: im["file_name"] for im in data["images"]}
    got = sorted((name_of[a["image_id"]], a["category_id"], *[round(v, 2) for v in a["bbox"]]) for a in data["annotations"])
    orig_name = {im["id"]: im["file_name"] for im in images}
    want = sorted((orig_name[a["image_id"]], a["category_id"], *[float(v) for v in a["bbox"]]) for a in anns)
    assert got == want
    assert check_dataset(back)[0].ok


@pytest.mark.parametrize("config", ["yolo_shapes.yaml", "faster_rcnn_shapes.yaml", "multitask_shapes.yaml"])
def test_a_num_classes_the_dataset_does_not_have_is_a_data_error(config: str) -> None:
    """The same error type and message as segmentation's (tests/test_segment.py)."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / config, ["model.num_classes=5", "train.device=cpu"])
    with pytest.raises(DataError, match=r"^model\.num_classes is 5 but the dataset has 3 classes "
                                        r"\['a', 'b', 'c'\]: set it to 3 or leave it out$"):
        get_task(cfg.task).build_model(cfg, ["a", "b", "c"])
