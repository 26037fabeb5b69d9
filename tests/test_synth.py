"""Synthetic shapes dataset: determinism, COCO/mask/YOLO agreement, video, crops, shipped copy."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from cvapps.data.synth import CLASS_NAMES, SynthSpec, generate_shapes
from cvapps.errors import CvappsError

# pycocotools' decode trips a numpy-2 copy= DeprecationWarning; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = SynthSpec(n_train=6, n_val=3, n_crops_per_class=(4, 2), video_frames=10)
SHIPPED = Path(__file__).resolve().parents[1] / "sample_data" / "shapes"


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("synth") / "shapes", SMALL, progress=False)


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(pattern))}


def test_deterministic(ds: Path, tmp_path: Path) -> None:
    again = generate_shapes(tmp_path / "again", SMALL, progress=False)
    other = generate_shapes(tmp_path / "other", SMALL, seed=1, progress=False)
    for pattern in ("annotations/*.json", "masks/*/*.png", "labels/*/*.txt", "classify/*/*/*.png", "video/*.json"):
        assert _files(ds, pattern) == _files(again, pattern), pattern
    assert _files(ds, "annotations/*.json") != _files(other, "annotations/*.json")
    assert _files(ds, "masks/*/*.png") != _files(other, "masks/*/*.png")


def test_rerun_overwrites_own_files_and_refuses_foreign(ds: Path, tmp_path: Path) -> None:
    out = generate_shapes(tmp_path / "rerun", SMALL, progress=False)
    generate_shapes(out, replace(SMALL, n_train=4), progress=False)  # our own folder: overwritten, stale files pruned
    assert len(list((out / "images" / "train").iterdir())) == 4
    assert len(list((out / "masks" / "train").iterdir())) == 4
    generate_shapes(out, SMALL, progress=False)
    assert _files(out, "annotations/*.json") == _files(ds, "annotations/*.json")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(CvappsError):
        generate_shapes(tmp_path / "foreign", SMALL, progress=False)


@pytest.mark.parametrize("split,n", [("train", 6), ("val", 3)])
def test_coco_boxes_and_masks(ds: Path, split: str, n: int) -> None:
    coco = COCO(str(ds / "annotations" / f"{split}.json"))
    assert len(coco.getImgIds()) == n
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
    for img in coco.loadImgs(coco.getImgIds()):
        stem = Path(img["file_name"]).stem
        assert cv2.imread(str(ds / "images" / split / img["file_name"])).shape == (img["height"], img["width"], 3)
        mask = cv2.imread(str(ds / "masks" / split / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (img["height"], img["width"]) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2, 3, 255}
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert 1 <= len(anns) <= 4
        polys = [coco.annToMask(a).astype(bool) for a in anns]
        valid = mask != 255
        for k, a in enumerate(anns):
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert a["iscrowd"] == 0 and a["area"] > 0
            assert (mask[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] == a["category_id"]).any()
            # compare only where no other shape's polygon reaches and off the ignore band
            others = np.zeros_like(valid)
            for j, p in enumerate(polys):
                if j != k:
                    others |= p
            region = valid & ~others
            pred, gt = polys[k] & region, (mask == a["category_id"]) & region
            assert (pred & gt).sum() / (pred | gt).sum() > 0.85


@pytest.mark.parametrize("split", ["train", "val"])
def test_yolo_labels_match_coco(ds: Path, split: str) -> None:
    coco = COCO(str(ds / "annotations" / f"{split}.json"))
    for img in coco.loadImgs(coco.getImgIds()):
        W, H = img["width"], img["height"]
        rows = (ds / "labels" / split / f"{Path(img['file_name']).stem}.txt").read_text().splitlines()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert len(rows) == len(anns)
        for row, a in zip(rows, anns):
            cls, xc, yc, w, h = row.split()
            assert int(cls) == a["category_id"] - 1
            box = [(float(xc) - float(w) / 2) * W, (float(yc) - float(h) / 2) * H, float(w) * W, float(h) * H]
            assert np.allclose(box, a["bbox"], atol=1.0)
    data = (ds / "data.yaml").read_text()
    assert "train: images/train" in data and "val: images/val" in data and "2: triangle" in data


def test_video_and_crops(ds: Path) -> None:
    cap = cv2.VideoCapture(str(ds / "video" / "shapes.mp4"))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (320, 240)
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (240, 320, 3)
    gt = json.loads((ds / "video" / "shapes.json").read_text())
    assert [g["frame"] for g in gt] == list(range(10))
    for g in gt:
        assert 2 <= len(g["boxes"]) <= 3 and len(g["boxes"]) == len(g["category_ids"])
        for x, y, w, h in g["boxes"]:
            assert 0 <= x and 0 <= y and x + w <= 320 and y + h <= 240 and w > 0 and h > 0
    for split, n in (("train", 4), ("val", 2)):
        for name in CLASS_NAMES:
            crops = sorted((ds / "classify" / split / name).glob("*.png"))
            assert len(crops) == n
            assert cv2.imread(str(crops[0])).shape == (64, 64, 3)
    assert not list(ds.rglob("*.tmp")) and not list(ds.rglob("*.tmp.mp4"))


def test_shipped_sample_data() -> None:
    if not SHIPPED.is_dir():
        pytest.fail(f"{SHIPPED} is missing: run generate_shapes('sample_data/shapes')")
    for split, n in (("train", 100), ("val", 30)):
        coco = COCO(str(SHIPPED / "annotations" / f"{split}.json"))
        ids = coco.getImgIds()
        assert len(ids) >= n and len(coco.getAnnIds()) >= len(ids)
        stems = {Path(i["file_name"]).stem for i in coco.loadImgs(ids)}
        for sub, ext in (("images", ".jpg"), ("masks", ".png"), ("labels", ".txt")):
            assert {p.stem for p in (SHIPPED / sub / split).glob(f"*{ext}")} == stems, (sub, split)
        for name in CLASS_NAMES:
            assert list((SHIPPED / "classify" / split / name).glob("*.png")), (split, name)
    assert (SHIPPED / "data.yaml").is_file()
    cap = cv2.VideoCapture(str(SHIPPED / "video" / "shapes.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) >= 240
    cap.release()
    assert len(json.loads((SHIPPED / "video" / "shapes.json").read_text())) >= 240
