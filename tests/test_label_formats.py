"""The labelling tools' formats (Pascal VOC, LabelMe, CVAT for images 1.1, YOLO polygons): reading
files as the tools export them (exact pixels), the layout detection, `data check` and `data convert`
round trips between every layout, a detection task built on a VOC folder, and hostile input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from label_format_refs import (
    BILLION_LAUGHS,
    CVAT_XML,
    LABELIMG_XML,
    LABELME_JSON,
    VOC_XML,
)
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvapps.cli import main as cli
from cvapps.cli.data import LAYOUT_NAMES
from cvapps.data.check import (
    LAYOUTS,
    available_splits,
    detect_layout,
    load_detection_split,
)
from cvapps.data.convert import convert_dataset
from cvapps.errors import DataError
from cvapps.tasks import config_from_dict, get_task


def _image(path: Path, w: int = 64, h: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _objects(split) -> list[tuple]:
    """(file name, class name, xywh rounded to 0.01, iscrowd, has polygon) of every object, sorted."""
    name = {im["id"]: im["file_name"] for im in split.gt["images"]}
    cls = dict(zip(split.category_ids, split.class_names))
    return sorted((name[a["image_id"]], cls[a["category_id"]], *[round(v, 2) for v in a["bbox"]], a["iscrowd"],
                   "segmentation" in a) for a in split.gt["annotations"])


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# reference files as the tools write them


def test_voc_reference_file_gives_exact_pixels(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    _image(root / "JPEGImages" / "2012_000042.jpg")
    _write(root / "Annotations" / "2012_000042.xml", VOC_XML)
    _write(root / "ImageSets" / "Main" / "val.txt", "2012_000042\n")
    _write(root / "ImageSets" / "Main" / "dog_val.txt", "2012_000042  1\n")  # a per-class list: not a split
    assert detect_layout(root) == "voc" and available_splits(root) == ["val"]
    split = load_detection_split(root, "val")
    assert split.class_names == ["dog", "person"] and split.report.ok
    # 1-based inclusive pixels -> 0-based continuous: [xmin - 1, ymin - 1, xmax, ymax]; the <part> is not an object
    assert _objects(split) == [("2012_000042.jpg", "dog", 10, 20, 20, 20, 1, False),
                               ("2012_000042.jpg", "person", 0, 0, 64, 48, 0, False)]
    np.testing.assert_array_equal(split.records[0].boxes, [[0, 0, 64, 48]])  # difficult: not trained on


def test_labelimg_xml_next_to_the_image(tmp_path: Path) -> None:
    root = tmp_path / "shots"
    _image(root / "cat.png")
    _write(root / "cat.xml", LABELIMG_XML)
    assert detect_layout(root) == "voc"
    split = load_detection_split(root, "train")
    assert _objects(split) == [("cat.png", "cat", 4.5, 2, 35.75, 28, 0, False)]


def test_labelme_reference_file(tmp_path: Path) -> None:
    root = tmp_path / "lm"
    _image(root / "photos" / "pet.jpg")
    _write(root / "json" / "pet.json", json.dumps(LABELME_JSON))
    assert detect_layout(root) == "labelme"
    split = load_detection_split(root, "train")
    assert split.report.ok, split.report.text()
    assert _objects(split) == [("photos/pet.jpg", "cat", 10, 5, 30, 25, 0, False),
                               ("photos/pet.jpg", "cat", 44, 10, 18, 36, 0, True),  # two polygons, one group
                               ("photos/pet.jpg", "dog", 2, 2, 18, 16, 1, True)]
    grouped = next(a for a in split.gt["annotations"] if len(a.get("segmentation", [])) == 2)
    assert grouped["segmentation"][1] == [44, 30, 62, 30, 62, 46]
    assert 0 < grouped["area"] < 18 * 36  # the polygons' area, not the box's


def test_cvat_reference_file(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    for name in ("a.png", "b.png"):
        _image(root / "images" / "street" / name)
    _write(root / "annotations.xml", CVAT_XML)
    assert detect_layout(root) == "cvat"
    split = load_detection_split(root, "train")
    assert split.class_names == ["tree", "car", "person"] and split.category_ids == [1, 2, 3]  # the meta's order
    assert _objects(split) == [("street/a.png", "car", 10.5, 5, 19.75, 15, 0, False),
                               ("street/a.png", "car", 35, 25, 20, 10, 0, False),  # rotated 90 degrees
                               ("street/a.png", "person", 40, 10, 10, 20, 0, True),
                               ("street/b.png", "car", 0, 0, 64, 48, 1, False)]


def test_yolo_polygon_labels(tmp_path: Path) -> None:
    root = tmp_path / "yseg"
    _image(root / "images" / "train" / "x.jpg")
    _write(root / "data.yaml", "names: [a, b]\n")
    _write(root / "labels" / "train" / "x.txt", "1 0.1 0.1 0.5 0.1 0.5 0.5\n0 0.5 0.5 0.25 0.5\n1 0.1 0.2 0.3\n")
    split = load_detection_split(root, "train")
    assert _objects(split) == [("x.jpg", "a", 24, 12, 16, 24, 0, False), ("x.jpg", "b", 6.4, 4.8, 25.6, 19.2, 0, True)]
    assert split.report.counts["malformed_entries"] == 1  # 3 numbers: neither a box nor a polygon
    poly = next(a["segmentation"] for a in split.gt["annotations"] if "segmentation" in a)
    assert poly == [[6.4, 4.8, 32.0, 4.8, 32.0, 24.0]]


# ---------------------------------------------------------------------------------------------
# layouts, check and convert

def test_layout_names_agree_and_unknown_folders_list_them(tmp_path: Path) -> None:
    assert set(LAYOUT_NAMES) == set(LAYOUTS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        detect_layout(tmp_path / "empty")
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in LAYOUTS)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A small COCO dataset (train + val) with gapped category ids, a polygon, a crowd region and a
    sub-pixel box, the start of every conversion."""
    root = tmp_path_factory.mktemp("src") / "coco"
    for split in ("train", "val"):
        for i in range(2):
            _image(root / "images" / split / f"{split}{i}.jpg", 80, 60)
        anns = [{"id": 1, "image_id": 10, "category_id": 5, "bbox": [4.5, 6.25, 20, 10]},
                {"id": 2, "image_id": 10, "category_id": 9, "bbox": [30, 20, 40, 30],
                 "segmentation": [[30, 20, 70, 20, 70, 50, 30, 50]]},
                {"id": 3, "image_id": 11, "category_id": 9, "bbox": [0, 0, 80, 60], "iscrowd": 1},
                {"id": 4, "image_id": 11, "category_id": 5, "bbox": [10, 12, 30.5, 20.75]}]
        images = [{"id": 10 + i, "file_name": f"{split}{i}.jpg", "width": 80, "height": 60} for i in range(2)]
        _write(root / "annotations" / f"{split}.json", json.dumps({
            "images": images, "annotations": anns, "categories": [{"id": 9, "name": "b"}, {"id": 5, "name": "a"}]}))
    return root


def _boxes(root: Path, layout: str = "auto") -> list[tuple]:
    """(file stem, class, xywh, iscrowd) of the val split: what every layout must keep."""
    sp = load_detection_split(root, "val", layout=layout)
    assert sp.class_names == ["a", "b"]
    assert sp.category_ids == [5, 9] or sp.layout == "yolo"  # YOLO keeps the ids in data.yaml for convert
    return [(Path(o[0]).stem, *o[1:6], o[6]) for o in _objects(sp)]


@pytest.mark.parametrize("fmt", ["voc", "labelme", "cvat", "yolo"])
def test_convert_round_trips_through_every_layout(source: Path, tmp_path: Path, fmt: str, capsys) -> None:
    want = _boxes(source)
    there = tmp_path / fmt
    assert cli(["data", "convert", str(source), "--to", fmt, "--out", str(there)]) == 0
    assert detect_layout(there) == fmt
    assert cli(["data", "check", str(there)]) == 0
    assert f"layout: {fmt} (" in capsys.readouterr().out
    got = _boxes(there)
    if fmt == "yolo":  # no ignore flag in YOLO txt: crowd regions are left out
        want = [w for w in want if not w[-1]]
    assert [g[:6] for g in got] == [w[:6] for w in want]
    for other in [f for f in LAYOUTS if f != fmt]:  # and on to every other layout, ids kept
        out = tmp_path / f"{fmt}_to_{other}"
        convert_dataset(there, other, out)
        kept = [w for w in want if other != "yolo" or not w[-1]]
        assert [g[:6] for g in _boxes(out)] == [w[:6] for w in kept], (fmt, other)
        if other == "coco":
            data = json.loads((out / "annotations" / "val.json").read_text())
            assert {c["id"]: c["name"] for c in data["categories"]} == {5: "a", 9: "b"}


def test_polygons_survive_labelme_cvat_yolo_and_back(source: Path, tmp_path: Path) -> None:
    path = source
    for fmt in ("labelme", "cvat", "yolo", "coco"):
        out = tmp_path / fmt
        convert_dataset(path, fmt, out)
        path = out
    data = json.loads((path / "annotations" / "train.json").read_text())
    assert [[30, 20, 70, 20, 70, 50, 30, 50]] in [a.get("segmentation") for a in data["annotations"]]


def test_convert_in_place_writes_next_to_the_images_and_changes_no_input(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "work"
    shutil.copytree(source, root)
    before = _hashes(root)
    assert cli(["data", "convert", str(root), "--to", "voc"]) == 0
    assert (root / "images" / "val" / "val0.xml").is_file() and (root / "labels.txt").is_file()
    assert cli(["data", "convert", str(root), "--to", "labelme"]) == 0
    assert cli(["data", "convert", str(root), "--to", "cvat"]) == 0
    after = _hashes(root)
    assert all(after[k] == v for k, v in before.items())  # nothing of the user's was rewritten
    assert cli(["data", "convert", str(root), "--to", "cvat"]) == 1  # exists: --overwrite needed
    assert detect_layout(root) == "coco"  # the first layout found; the others are read when named
    for fmt in ("voc", "labelme", "cvat"):
        assert _boxes(root, layout=fmt) == _boxes(source), fmt


def test_a_detection_task_trains_on_a_voc_folder(small_shapes: Path, tmp_path: Path) -> None:
    voc = tmp_path / "voc"
    convert_dataset(small_shapes, "voc", voc)
    assert sorted(p.name for p in (voc / "ImageSets" / "Main").iterdir()) == ["train.txt", "val.txt"]
    task = get_task("faster_rcnn")
    cfg = config_from_dict({"task": "faster_rcnn", "data": {"root": str(voc), "imgsz": 64, "workers": 0},
                            "model": {"backbone": "tiny", "fpn_features": ["c3", "c4", "c5"], "fpn_channels": 16,
                                      "roi_head_width": 32,
                                      "anchor_sizes": [[16], [32], [64], [128]], "aspect_ratios": [[1.0]]},
                            "augment": {"train": []}, "train": {"device": "cpu"}})
    splits = task.build_datasets(cfg)
    assert splits.class_names == ["circle", "square", "triangle"]
    assert len(splits.train) == 16 and len(splits.val) == 8
    task.build_metric(splits)  # the VOC ground truth is a valid COCO dataset
    torch.manual_seed(0)
    model = task.build_model(cfg, splits.class_names).train()
    images, targets = task.collate([splits.train[i] for i in range(2)])
    loss = sum(model(images.float() / 255, targets).values())
    loss.backward()
    assert torch.isfinite(loss)


def test_difficult_objects_are_ignored_by_the_evaluation(tmp_path: Path) -> None:
    """A confident detection on a difficult object is neither a true nor a false positive (VOC's rule)."""
    root = tmp_path / "voc"
    _image(root / "JPEGImages" / "2012_000042.jpg")
    _write(root / "Annotations" / "2012_000042.xml", VOC_XML)
    gt = COCO()
    gt.dataset = load_detection_split(root, "train").gt
    gt.createIndex()
    dets = gt.loadRes([{"image_id": 1, "category_id": 1, "bbox": [10, 20, 20, 20], "score": 0.9},   # the dog
                       {"image_id": 1, "category_id": 2, "bbox": [0, 0, 64, 48], "score": 0.8}])  # the person
    ev = COCOeval(gt, dets, "bbox")
    ev.evaluate()
    ev.accumulate()
    person = ev.eval["precision"][0, :, 1, 0, 2]  # IoU 0.5, class person, all areas, 100 dets
    dog = ev.eval["precision"][0, :, 0, 0, 2]
    assert person.min() > 0.999 and (dog == -1).all()  # the dog has no positives: not evaluated, no FP


# ---------------------------------------------------------------------------------------------
# hostile input


def test_hostile_xml_is_refused_with_one_line(tmp_path: Path, capsys) -> None:
    secret = _write(tmp_path / "secret.txt", "TOP-SECRET")
    root = tmp_path / "voc"
    for name in ("good", "laughs", "xxe", "broken", "numbers"):
        _image(root / "train" / f"{name}.jpg")
    _write(root / "train" / "good.xml", LABELIMG_XML.replace("cat.png", "good.jpg"))
    _write(root / "train" / "laughs.xml", BILLION_LAUGHS)
    _write(root / "train" / "xxe.xml", f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
                                       "<annotation><object><name>&x;</name></object></annotation>")
    _write(root / "train" / "broken.xml", "<annotation>\n<object>\n<name>cat</name>\n</annotation>")
    _write(root / "train" / "numbers.xml", LABELIMG_XML.replace("cat.png", "numbers.jpg")
           .replace("<xmin>5.5</xmin>", "<xmin>12px</xmin>") + "")
    assert cli(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "TOP-SECRET" not in out and "lollol" not in out
    assert "laughs.xml: XML entity declarations and external references are refused" in out
    assert "xxe.xml: XML entity declarations" in out
    assert "broken.xml:4: not well-formed XML" in out
    assert "numbers.xml object 1: '12px' is not a number" in out
    split = load_detection_split(root, "train", log=False)
    assert [r.file_name for r in split.records] == ["good.jpg", "numbers.jpg"]  # the bad object dropped, not the image

    cvat = tmp_path / "cvat"
    _write(cvat / "annotations.xml", BILLION_LAUGHS.replace("annotation>", "annotations>"))
    assert cli(["data", "check", str(cvat)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "refused" in err and "\n" not in err


def test_labelme_paths_never_leave_the_root(tmp_path: Path) -> None:
    _image(tmp_path / "outside.jpg")
    root = tmp_path / "lm"
    doc = {**LABELME_JSON, "imageData": None}
    for name, image_path in (("up", "../outside.jpg"), ("abs", str(tmp_path / "outside.jpg")),
                             ("win", "C:\\Windows\\win.ini"), ("ok", "ok.jpg")):
        _write(root / f"{name}.json", json.dumps({**doc, "imagePath": image_path}))
    _image(root / "ok.jpg")
    split = load_detection_split(root, "train", log=False)
    assert [r.file_name for r in split.records] == ["ok.jpg"]
    assert split.report.counts["escaping_paths"] == 3


def test_malformed_labelme_and_yolo_values_are_reported_skips(tmp_path: Path) -> None:
    root = tmp_path / "lm"
    _image(root / "a.jpg")
    shapes = [{"label": "cat", "points": [[1, 2], ["x", 4]], "shape_type": "rectangle"},
              {"label": "cat", "points": [[1, 2], ["inf", 4]], "shape_type": "rectangle"},
              {"label": "cat\nmeow", "points": [[1, 2], [3, 4]], "shape_type": "rectangle"},
              {"label": "cat", "points": [[1, 2], [3, 4]], "shape_type": "hexagon"},
              {"label": "cat", "points": [[1, 2], [30, 40]], "shape_type": "rectangle"}]
    _write(root / "a.json", json.dumps({"shapes": shapes, "imagePath": "a.jpg"}))
    _write(root / "b.json", '{"shapes": [], "imagePath": "a.jpg", "imageWidth": NaN}')
    split = load_detection_split(root, "train", log=False)
    assert split.report.counts["malformed_entries"] == 5
    assert _objects(split) == [("a.jpg", "cat", 1, 2, 29, 38, 0, False)]

    yolo = tmp_path / "y"
    _image(yolo / "images" / "train" / "a.jpg")
    _write(yolo / "data.yaml", "names: [a]\n")
    _write(yolo / "labels" / "train" / "a.txt", "0 nan 0.5 0.2 0.2\n0 0.5 0.5 0.2 inf\nx 0.5 0.5 0.2 0.2\n")
    assert load_detection_split(yolo, "train", log=False).report.counts["malformed_entries"] == 3


def test_voc_and_cvat_names_never_leave_the_root(tmp_path: Path) -> None:
    _image(tmp_path / "outside.jpg")
    _write(tmp_path / "outside.xml", LABELIMG_XML)
    voc = tmp_path / "voc"
    _image(voc / "JPEGImages" / "a.jpg")
    _write(voc / "Annotations" / "a.xml", LABELIMG_XML.replace("cat.png", "../../outside.jpg"))
    _write(voc / "ImageSets" / "Main" / "train.txt", "a\n../../outside\n")
    split = load_detection_split(voc, "train", log=False)
    assert not split.records and split.report.counts["escaping_paths"] == 2

    cvat = tmp_path / "cvat"
    _image(cvat / "images" / "ok.png")
    _write(cvat / "annotations.xml", CVAT_XML.replace("street/a.png", "../../outside.jpg")
           .replace("street/b.png", "ok.png"))
    split = load_detection_split(cvat, "train", log=False)
    assert [r.file_name for r in split.records] == ["ok.png"] and split.report.counts["escaping_paths"] == 1
