"""cvapps.formats: read(write(x)) == x for each format, the empty-result rule, the check rules shared by
detection and segmentation (sub-pixel boxes, bad segmentations, iscrowd), the one JSON reader and
merge-json's refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvapps.cli import main as cli
from cvapps.data.segmentation import SegmentationDataset, scan_split
from cvapps.errors import DataError, ImageReadError
from cvapps.formats.coco import ImageIndex, empty_results, load_results, read_coco_json, read_json
from cvapps.formats.coco_encode import box_to_coco, mask_to_rle, rle_to_mask
from cvapps.formats.coco_checks import load_coco_split
from cvapps.formats.masks import read_mask, write_mask
from cvapps.formats.merge import merge_files
from cvapps.formats.names import frame_file_name, frame_name, output_relpath, safe_name, video_of
from cvapps.structures import Frame, SegmentationMask
from cvapps.io.images import image_size
from cvapps.formats.yolo import load_yolo_split, write_data_yaml, write_yolo_labels


def _image(path: Path, w: int = 64, h: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))
    return path


# ----------------------------------------------------------------------------------- round trips
def test_names_round_trip() -> None:
    pixels = np.zeros((1, 1, 3), np.uint8)
    assert video_of(Frame.of_video(pixels, "/v/clip.mp4", 123, 4.1)) == ("/v/clip.mp4", 123)
    assert frame_name("clip.mp4", 7) == "clip.mp4#frame=000007"
    assert video_of(Frame(pixels, "/a/photo.jpg")) is None and video_of("/a/x.mp4#frame=000001") is None  # never parsed
    assert frame_file_name(Frame.of_video(pixels, "/v/clip.mp4", 3, 0.1)) == "clip.mp4#frame=000003"
    assert frame_file_name(Frame.of_video(pixels, "rtsp://cam/x", 3, 0.1)) == "rtsp://cam/x#frame=000003"
    assert frame_file_name("/d/sub/a.png", "/d") == "sub/a.png"
    assert output_relpath("/d/sub/a.png", "/d", ".png").as_posix() == "sub/a.png"
    bad = os.fsdecode(b"bad\xffname.png")
    assert safe_name(bad) == "bad\\xffname.png" and safe_name("ok.png") == "ok.png"
    safe_name(bad).encode("utf-8")  # always encodable


def test_yolo_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "y"
    _image(root / "images" / "train" / "a.jpg", 100, 50)
    boxes = np.array([[10, 5, 40, 30], [0, 0, 100, 50]], np.float32)
    write_yolo_labels(root / "labels" / "train" / "a.txt", boxes, [1, 0], 100, 50)
    write_data_yaml(root / "data.yaml", ["cat", "dog"], {"train": "images/train"})
    split = load_yolo_split(root, "train")
    assert split.report.ok and split.class_names == ["cat", "dog"]
    np.testing.assert_allclose(split.records[0].boxes, boxes, atol=1e-3)
    assert split.records[0].labels.tolist() == [1, 0]


def test_masks_round_trip(tmp_path: Path) -> None:
    mask = np.random.default_rng(0).integers(0, 4, (21, 33)).astype(np.uint8)
    mask[0, :5] = 255
    write_mask(tmp_path / "m.png", mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    os.mkfifo(tmp_path / "fifo.png")  # would block a reader
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_mask(tmp_path / "fifo.png")
    with pytest.raises(ImageReadError, match="not a regular file"):
        image_size(tmp_path / "fifo.png")


def test_rle_and_box_rules() -> None:
    binary = np.random.default_rng(1).random((17, 29)) > 0.5
    rle = mask_to_rle(binary)
    assert isinstance(rle["counts"], str) and np.array_equal(rle_to_mask(rle, 17, 29), binary)
    assert box_to_coco([10.004, 5, 8, 20.126]) == [10.0, 5.0, 0.0, 15.13]  # negative width clamped to 0


def test_coco_dataset_round_trip(tmp_path: Path) -> None:
    from cvapps.io.sinks import CocoSink
    from cvapps.structures import Detections, Frame, Prediction

    sink = CocoSink(tmp_path / "d.json", ["a", "b"], [3, 7], results_path=tmp_path / "r.json")
    det = Prediction(Detections(np.array([[1.0, 2.0, 11.5, 12.25]], np.float32), np.array([0.9], np.float32), [1]))
    sink.write(Frame(np.zeros((20, 30, 3), np.uint8), "/x/a.jpg", 0), det)
    expected = sink.dataset()
    sink.close()
    assert read_coco_json(tmp_path / "d.json") == json.loads(json.dumps(expected))
    (r,) = read_json(tmp_path / "r.json")
    assert r == {"image_id": 1, "category_id": 7, "bbox": [1.0, 2.0, 10.5, 10.25], "score": 0.9}


def test_empty_result_rule_loads_in_pycocotools() -> None:
    """One placeholder for boxes and masks: loadRes takes it, and it scores as no results at all."""
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "height": 8, "width": 8, "file_name": "a.jpg"}],
                  "categories": [{"id": 5, "name": "a"}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 4, 4], "area": 16,
                                   "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}]}
    gt.createIndex()
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(gt, gt.loadRes(empty_results(1, 5, 8, 8)), iou_type)
        ev.evaluate()
        ev.accumulate()
        none = COCOeval(gt, load_results(gt, []), iou_type)
        none.evaluate()
        none.accumulate()
        assert np.array_equal(ev.eval["precision"], none.eval["precision"])
    assert SegmentationMask(np.zeros((8, 8), np.uint8)).to_coco(1, [0, 5]) == []


def test_image_index_rule() -> None:
    index = ImageIndex()
    a = index.lookup("/d/a.jpg", 10, 10)
    video_frame = Frame.of_video(np.zeros((5, 5, 3), np.uint8), "/v/c.mp4", 4, 0.4)
    frame = index.lookup(video_frame, 5, 5)
    assert [a["id"], frame["id"], index.lookup("/d/a.jpg", 10, 10)["id"]] == [1, 2, 1]
    with_images = ImageIndex(image_dir="overlays")
    assert with_images.lookup(video_frame, 5, 5)["file_name"] == "overlays/c_000004.jpg"
    gt = ImageIndex(gt={"images": [{"id": 40, "file_name": "sub/a.jpg"}]})
    assert gt.lookup("/data/sub/a.jpg", 1, 1)["id"] == 40 and gt.lookup("/data/b.jpg", 1, 1) is None


# ------------------------------------------------------------------------------------ check rules
def test_subpixel_negative_coordinate_is_not_a_problem(tmp_path: Path, capsys) -> None:
    root = tmp_path / "y"
    _image(root / "images" / "train" / "a.jpg", 100, 50)
    (root / "labels" / "train").mkdir(parents=True)
    # x1 = (0.05 - 0.1000002 / 2) * 100 = -0.00001 px: 6-decimal rounding, rounds to -0.0
    (root / "labels" / "train" / "a.txt").write_text("0 0.050000 0.500000 0.100000 0.200000\n"
                                                      "0 0.049999 0.500000 0.100000 0.200000\n")
    (root / "data.yaml").write_text("names: [cat]\n")
    split = load_yolo_split(root, "train")
    assert split.report.ok, split.report.problems
    assert split.records[0].boxes.min() >= 0
    assert cli(["data", "check", str(root)]) == 0
    assert "no problems" in capsys.readouterr().out


def _seg_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "seg"
    for name in ("good.png", "noheight.png", "badpoly.png", "badrle.png", "crowd.png"):
        _image(root / "images" / "train" / name, 32, 24)
    _image(tmp_path / "outside.png", 32, 24)
    poly = [[2, 2, 20, 2, 20, 20, 2, 20]]
    images = [{"id": 1, "file_name": "good.png", "width": 32, "height": 24},
              {"id": 2, "file_name": "noheight.png"},
              {"id": 3, "file_name": "badpoly.png", "width": 32, "height": 24},
              {"id": 4, "file_name": "badrle.png", "width": 32, "height": 24},
              {"id": 5, "file_name": "crowd.png", "width": 32, "height": 24},
              {"id": 6, "file_name": str(tmp_path / "outside.png"), "width": 32, "height": 24}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": poly},          # no bbox: fine for segm
            {"id": 2, "image_id": 2, "category_id": 1, "segmentation": poly, "bbox": [2, 2, 18, 18]},
            {"id": 3, "image_id": 3, "category_id": 1, "segmentation": [[1, "x", 3]]},
            {"id": 4, "image_id": 4, "category_id": 1, "segmentation": {"size": [5, 5], "counts": "zz"}},
            {"id": 5, "image_id": 5, "category_id": 1, "segmentation": poly, "iscrowd": "yes"},
            {"id": 6, "image_id": 6, "category_id": 1, "segmentation": poly}]
    path = root / "annotations" / "train.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "sq"}]}))
    return root


def test_segmentation_loader_applies_the_check_rules(tmp_path: Path) -> None:
    root = _seg_dataset(tmp_path)
    split = load_coco_split(root, "train", segments=True)
    c = split.report.counts
    assert (c["malformed_entries"], c["escaping_paths"]) == (3, 1)  # bad polygon, bad RLE, iscrowd "yes"
    assert any("iscrowd" in p for p in split.report.problems)
    skipped: list[tuple[str, str]] = []
    samples = scan_split(root, "train", 2, [0, 1], skipped)
    by_name = {Path(s.image).name: s for s in samples}
    assert set(by_name) == {"good.png", "noheight.png", "badpoly.png", "badrle.png", "crowd.png"}
    assert by_name["noheight.png"].height == 24 and by_name["noheight.png"].width == 32  # read from the file
    assert not by_name["badpoly.png"].anns and not by_name["badrle.png"].anns
    assert len(skipped) == 4 and any("outside" in reason for _, reason in skipped)
    from cvapps.data.augment import SamplePipeline

    ds = SegmentationDataset(samples, SamplePipeline(32, "letterbox", 3, None))
    for i in range(len(ds)):  # no TypeError mid-training
        image, mask = ds[i]
        assert mask.shape[-2:] == image.shape[-2:]
    good = ds.load(list(by_name).index("good.png"))[1]
    assert good[10, 10] == 1 and good[22, 30] == 0


def test_detection_reads_the_same_rules(tmp_path: Path) -> None:
    root = _seg_dataset(tmp_path)
    split = load_coco_split(root, "train")
    assert any("iscrowd" in p for p in split.report.problems)
    good = next(r for r in split.records if r.file_name == "good.png")
    np.testing.assert_allclose(good.boxes, [[2, 2, 20, 20]])  # no bbox: the polygon's bounding box


# ------------------------------------------------------------------------------------------ JSON
def test_deep_json_is_one_line_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nested too deeply") as exc:
        read_json(deep)
    assert "\n" not in str(exc.value)


def _results(path: Path, value: float = 0.5) -> Path:
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": value}]))
    return path


def test_merge_json_refusals(tmp_path: Path, capsys) -> None:
    a, b = _results(tmp_path / "a.json"), _results(tmp_path / "b.json")
    before = a.read_bytes()
    cases = [
        ([str(a), str(a), str(b)], "one of the inputs"),
        ([str(tmp_path / "m.json"), str(a), str(tmp_path / "." / "a.json")], "given twice"),
        ([str(tmp_path), str(a), str(b)], "is a folder"),
        (["/proc/cvapps_merged.json", str(a), str(b)], "could not write"),
    ]
    nan = tmp_path / "nan.json"
    nan.write_text('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]')
    cases.append(([str(tmp_path / "m.json"), str(a), str(nan)], "nan.json"))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    cases.append(([str(tmp_path / "m.json"), str(a), str(deep)], "nested too deeply"))
    for argv, message in cases:
        assert cli(["merge-json", *argv]) == 1, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert a.read_bytes() == before and not (tmp_path / "m.json").exists()
    merged, _ = merge_files(tmp_path / "m.json", [a, b])
    assert len(merged) == 2 and (tmp_path / "m.json").is_file()
