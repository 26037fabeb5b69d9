"""The one prediction container (cvapps.structures.prediction): Detections' validator, slicing,
merge, offset and scale; every part's JSON round trip; the exact Ray-manifest round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cvapps.engine.manifest import decode_prediction, encode_prediction
from cvapps.engine.manifest_check import check_prediction
from cvapps.structures import (
    Classification,
    Counts,
    Detections,
    LineCount,
    Prediction,
    Presence,
    SegmentationMask,
    ZoneCount,
)

NAMES = ["circle", "square", "triangle"]


def _detections(masks: bool = True) -> Detections:
    """Four boxes of a 20 x 30 image with every per-box field set (values that float32 holds inexactly)."""
    boxes = np.array([[1.123456, 2.5, 10.0001, 12.7], [3, 4, 9, 9], [0.1, 0.2, 29.9, 19.9], [5, 5, 6, 6]], np.float32)
    instance = np.zeros((4, 20, 30), bool)
    instance[0, 2:12, 1:10], instance[1, 4:9, 3:9], instance[2, :, :], instance[3, 5, 5] = True, True, True, True
    return Detections(boxes, np.array([0.912345678, 0.5, 0.3, 0.1], np.float32), np.array([0, 2, 1, 2]),
                      instance if masks else None, np.array([7, 8, 9, 10]),
                      {"area": np.array([1.5, 2.25, 3.0, 4.0], np.float32), "kind": np.array(["a", "b", "c", "dd"])})


def _full() -> Prediction:
    """Every part set: detections, a multitask mask, a classification, presence and counts."""
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 3:9], mask[10:12, 20:25], mask[0, 0] = 1, 3, 255
    counts = Counts([LineCount((0.0, 80.125, 160.3333, 80.0), 2, 1, {"circle": {"in": 2, "out": 1}})],
                    [ZoneCount([(10.0, 10.5), (150.25, 10.0), (150.0, 150.0)], 3, {"square": 3})])
    return Prediction(_detections(), SegmentationMask(mask, np.array([0.5, 0.1, 0.2, 0.3], np.float32), True),
                      Classification(1, 0.7512345, [(1, 0.7512345), (0, 0.2)]),
                      Presence(torch.tensor([0, 2]), np.array([0.9, 0.1, 0.8123], np.float32)), counts)


def test_validator_refuses_inconsistent_fields() -> None:
    boxes, scores, labels = torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="same length"):
        Detections(boxes, torch.zeros(3), labels)
    with pytest.raises(ValueError, match="masks must be"):
        Detections(boxes, scores, labels, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="track_ids"):
        Detections(boxes, scores, labels, track_ids=[1])
    with pytest.raises(ValueError, match="data"):
        Detections(boxes, scores, labels, data={"x": np.zeros(3)})
    with pytest.raises(ValueError, match="HxW"):
        SegmentationMask(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        SegmentationMask(np.full((2, 2), 300))
    with pytest.raises(ValueError, match="presence labels"):
        Presence([3], [0.1, 0.2])
    with pytest.raises(TypeError, match="Prediction.detections must be a Detections"):
        Prediction(SegmentationMask(np.zeros((2, 2), np.uint8)))
    d = Detections([[1, 2, 3, 4]], [0.5], [1])
    assert d.boxes.dtype == torch.float32 and d.labels.dtype == torch.int64 and len(d) == 1


def test_getitem_slices_every_per_box_field() -> None:
    det = _detections()
    for index, want in ((1, [1]), (-1, [3]), (slice(1, 3), [1, 2]), (np.array([True, False, True, False]), [0, 2]),
                        (torch.tensor([3, 0]), [3, 0]), ([2], [2]), (det.scores > 0.4, [0, 1])):
        part = det[index]
        assert part.boxes.equal(det.boxes[want]) and part.scores.equal(det.scores[want])
        assert part.labels.equal(det.labels[want]) and part.masks.equal(det.masks[want])
        assert part.track_ids.tolist() == det.track_ids[want].tolist()
        assert {k: v.tolist() for k, v in part.data.items()} == {k: v[want].tolist() for k, v in det.data.items()}
    assert len(det[[]]) == 0 and det[[]].masks.shape == (0, 20, 30)


def test_merge_concatenates() -> None:
    det = _detections()
    merged = Detections.merge([det[:1], det[1:3], det[3:]])
    assert merged == det
    assert Detections.merge([]) == Detections.empty()
    with pytest.raises(ValueError, match="masks on some"):
        Detections.merge([det, _detections(masks=False)])
    with pytest.raises(ValueError, match="data keys"):
        Detections.merge([det, Detections(det.boxes, det.scores, det.labels, det.masks, det.track_ids)])


def test_offset_and_scale() -> None:
    det = _detections()[:2]
    moved = det.offset(5, 3, (40, 50))
    assert moved.boxes.tolist() == (det.boxes + torch.tensor([5.0, 3, 5, 3])).tolist()
    assert moved.masks.shape == (2, 40, 50) and moved.masks[:, 3:23, 5:35].equal(det.masks)
    assert moved.masks.sum() == det.masks.sum() and moved.track_ids.tolist() == [7, 8]
    clipped = det.offset(-2, 25, (30, 30))  # a tile reaching past the canvas keeps what falls inside
    assert clipped.masks.shape == (2, 30, 30) and clipped.masks[0].sum() == det.masks[0, :5, 2:].sum()
    with pytest.raises(ValueError, match="image_size"):
        det.offset(1, 1)
    assert _detections(masks=False).offset(1, 2).boxes[1].tolist() == [4, 6, 10, 11]
    big = det.scale(2, 0.5)
    assert big.boxes[1].tolist() == [6, 2, 18, 4.5] and big.masks.shape == (2, 10, 60)
    assert big.masks[1].equal(det.masks[1][::2].repeat_interleave(2, dim=1))  # nearest: every other row, columns twice


@pytest.mark.parametrize("part", ["detections", "semantic", "classification", "presence", "counts"])
def test_json_round_trip_of_every_part(part: str) -> None:
    pred = Prediction(**{part: getattr(_full(), part)})
    text = json.dumps(pred.to_json(NAMES))
    back = Prediction.from_json(json.loads(text))
    assert back == pred and back.parts().keys() == pred.parts().keys()
    check_prediction(json.loads(text), 20, 30, len(NAMES))


def test_json_form_names_and_shape() -> None:
    d = _full().to_json(NAMES)
    assert d["names"] == ["circle", "triangle", "square", "triangle"] and d["track_ids"] == [7, 8, 9, 10]
    assert d["boxes"][0][0] == float(np.float32(1.123456))  # unrounded
    assert [(c["label"], c["name"]) for c in d["classes"]] == [(1, "circle"), (3, "triangle"), (255, "ignore")]
    assert d["topk"][0] == {"label": 1, "name": "square", "score": 0.7512345}
    assert [p["name"] for p in d["present"]] == ["circle", "triangle"] and len(d["presence"]) == 3
    assert d["counts"]["lines"][0]["line"][2] == 160.3333  # unrounded, unlike counts.json
    seg = SegmentationMask(np.eye(3, dtype=np.uint8))
    assert seg.to_json(["background", "a"])["classes"][0]["name"] == "a"  # a segmenter's names start with background


def test_manifest_round_trip_is_exact() -> None:
    pred = _full()
    stored = json.loads(json.dumps(encode_prediction(pred, NAMES), allow_nan=False))
    check_prediction(stored, 20, 30, len(NAMES))
    back = decode_prediction(stored)
    assert back == pred
    assert back.detections.track_ids.tolist() == [7, 8, 9, 10] and back.detections.masks.equal(pred.detections.masks)
    assert back.counts == pred.counts and back.semantic.extra_background
    assert back.to_coco(1, [5, 6, 7]) == pred.to_coco(1, [5, 6, 7])
    empty = Prediction(Detections.empty())
    assert decode_prediction(json.loads(json.dumps(encode_prediction(empty)))) == empty


def test_coco_form() -> None:
    pred = _full()
    entries = pred.to_coco(4, [11, 12, 13])
    boxes = [e for e in entries if "bbox" in e]
    assert [e["category_id"] for e in boxes] == [11, 13, 12, 13] and [e["track_id"] for e in boxes] == [7, 8, 9, 10]
    assert boxes[0]["bbox"] == [1.12, 2.5, 8.88, 10.2] and boxes[0]["score"] == 0.91235 and "segmentation" in boxes[0]
    masks = [e for e in entries if "bbox" not in e]  # mask value c is class c - 1 of a multitask model
    assert [(e["category_id"], e["score"]) for e in masks] == [(11, 0.1), (13, 0.3)]
    assert Prediction(classification=Classification(0, 0.5)).to_coco(1, [1]) == []
