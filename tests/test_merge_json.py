"""`cvapps merge-json`: shard outputs (COCO results lists or dataset files) -> one file, unique ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvapps.cli import main
from cvapps.formats.merge import merge_coco
from cvapps.errors import DataError

CATS = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]


def shard(names: list[str], first_id: int = 1) -> dict:
    """A predictions_coco.json as one `detect --shard` run writes it: ids 1..N of its own."""
    images = [{"id": first_id + i, "file_name": n, "width": 10, "height": 10} for i, n in enumerate(names)]
    anns = [{"id": i + 1, "image_id": im["id"], "category_id": 1 + i % 2, "bbox": [1, 1, 2, 2], "score": 0.9}
            for i, im in enumerate(images)]
    return {"images": images, "annotations": anns, "categories": CATS}


def test_merge_dataset_shards_gives_unique_ids(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(shard(["x.jpg", "y.jpg"])))
    b.write_text(json.dumps(shard(["z.jpg", "w.jpg"])))  # same ids 1, 2: different images
    before = (a.read_bytes(), b.read_bytes())
    assert main(["merge-json", str(tmp_path / "m.json"), str(a), str(b)]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    ids = [im["id"] for im in merged["images"]]
    assert len(set(ids)) == 4 and [im["file_name"] for im in merged["images"]] == ["x.jpg", "y.jpg", "z.jpg", "w.jpg"]
    assert [a["id"] for a in merged["annotations"]] == [1, 2, 3, 4]
    by_id = {im["id"]: im["file_name"] for im in merged["images"]}
    # every annotation still points at its own image
    assert [by_id[a["image_id"]] for a in merged["annotations"]] == ["x.jpg", "y.jpg", "z.jpg", "w.jpg"]
    assert merged["categories"] == CATS
    assert (a.read_bytes(), b.read_bytes()) == before

    # Ids from --coco-gt (already consistent across shards) are kept as they are.
    kept, notes = merge_coco([shard(["p.jpg"], 7), shard(["q.jpg"], 3)], ["s0", "s1"])
    assert [im["id"] for im in kept["images"]] == [7, 3] and not notes


def test_merge_results_lists_shift_overlapping_ids(tmp_path: Path) -> None:
    r0 = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]
    r1 = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.6},
          {"image_id": 2, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.7}]
    merged, notes = merge_coco([r0, r1], ["r0", "r1"])
    assert [r["image_id"] for r in merged] == [1, 2, 3] and notes
    same, notes = merge_coco([r0, [{**r1[1], "image_id": 5}]], ["r0", "r1"])
    assert [r["image_id"] for r in same] == [1, 5] and not notes


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ('"text"', "expected a COCO results list or dataset object"),
    ('[{"category_id": 1}]', "lacks 'image_id'"),
    ('{"images": [], "categories": []}', "no 'annotations' list"),
    ('{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 9}], "categories": []}',
     "refers to image 9"),
])
def test_merge_json_bad_input_is_one_line(tmp_path: Path, capsys, content: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(shard(["x.jpg"])) if content.lstrip().startswith("{") else "[]")
    assert main(["merge-json", str(tmp_path / "m.json"), str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.json").exists()


def test_mixed_kinds_refused() -> None:
    with pytest.raises(DataError, match="mix results lists and dataset files"):
        merge_coco([[], shard(["a"])], ["a", "b"])
