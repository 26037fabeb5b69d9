"""Issue 11: `cvapps val` == an outside COCOeval of `cvapps detect --save-json` on mixed, non-square sizes.

Both run the same predictor (rect letterbox per image, postprocess to original pixels), so the
COCO results are identical and so is every mAP: difference 0.0000. The mixed-size copy holds only
a val split, which is also all `cvapps val` needs.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from tiny_checkpoints import ROOT, SHAPES, make_checkpoint

from cvapps.cli import main
from cvapps.engine.evaluate import evaluate_checkpoint
from cvapps.metrics.coco import CocoDetectionMetric

CHECK = runpy.run_path(str(ROOT / "benchmarks" / "coco_eval_check.py"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    from cvapps.data.synth import SynthSpec, generate_shapes

    base = tmp_path_factory.mktemp("parity")
    generate_shapes(base / "shapes", SynthSpec(n_train=2, n_val=6, imgsz=96, n_crops_per_class=(1, 1), crop_size=32,
                                               video_frames=2, video_size=(64, 48)), progress=False)
    root = CHECK["mixed_size_copy"](base / "shapes", "val", base / "mixed", seed=1, sizes=(100, 170))
    assert not (root / "annotations" / "train.json").exists()
    images = json.loads((root / "annotations" / "val.json").read_text())["images"]
    assert len({(im["width"], im["height"]) for im in images}) > 2 and all(im["width"] != im["height"] for im in images)
    return root


def _checkpoint(tmp_path: Path, kind: str) -> Path:
    if kind == "yolo":
        path = make_checkpoint(tmp_path / "yolo.pt", "yolo_shapes.yaml", ["data.imgsz=96"], SHAPES, [1, 2, 3])
        raw = torch.load(path, weights_only=True)
        for key, value in raw["model"].items():  # class-score biases 0: random boxes at score ~0.5
            if ".cv3." in key and key.endswith(".2.bias"):
                value.zero_()
        torch.save(raw, path)
        return path
    return make_checkpoint(tmp_path / "frcnn.pt", "faster_rcnn_shapes.yaml",
                           ["data.imgsz=96", "model.fpn_channels=16", "model.roi_head_width=32"], SHAPES, [1, 2, 3])


@pytest.mark.parametrize("kind", ["yolo", "faster_rcnn"])
def test_val_equals_outside_cocoeval_of_detect_json_on_mixed_sizes(kind, mixed, tmp_path, monkeypatch):
    ckpt = _checkpoint(tmp_path, kind)
    seen: list[list[dict]] = []
    summarize = CocoDetectionMetric.summarize

    def keep(self):
        seen.append([dict(r) for r in self.results])
        return summarize(self)

    monkeypatch.setattr(CocoDetectionMetric, "summarize", keep)
    val = evaluate_checkpoint(ckpt, [f"data.root={mixed}", "train.device=cpu"])  # val split only: enough
    from cvapps.engine.load import load_model

    opts = load_model(ckpt).task.eval_options
    out = tmp_path / "detect"
    ann = mixed / "annotations" / "val.json"
    assert main(["detect", str(mixed / "images" / "val"), "--model", str(ckpt), "--out", str(out), "--device", "cpu",
                 "--conf", str(opts["conf"]), "--iou", str(opts["iou"]), "--max-det", str(opts["max_det"]),
                 "--coco-gt", str(ann), "--no-images", "--quiet"]) == 0
    exported = json.loads((out / "predictions.json").read_text())
    assert len(exported) > 0, "a model that detects nothing would make the comparison empty"

    def key(r):
        return (r["image_id"], r["category_id"], r["score"], tuple(r["bbox"]))

    assert sorted(map(key, seen[0])) == sorted(map(key, exported)), "val scores the very boxes detect writes"
    outside = CHECK["independent_coco_eval"](ann, out / "predictions.json")
    for name, value in zip(("map", "map50", "map75"), outside):
        assert abs(val[name] - value) == 0.0, (name, val[name], value)


def test_coco_eval_check_reports_zero_difference_on_mixed_sizes(mixed, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, "yolo")
    assert CHECK["main"]([str(ckpt), "--data", str(mixed.parent / "shapes"), "--tolerance", "0"]) == 0
    out = capsys.readouterr().out
    assert "largest difference 0.0000 on mixed non-square sizes" in out


@pytest.mark.parametrize("kind", ["classify", "segment"])
def test_val_needs_only_a_val_split(kind, small_shapes, tmp_path):
    """`cvapps val CKPT data.root=DIR` where DIR holds nothing but a val split (issue 11)."""
    import shutil

    root = tmp_path / "only_val"
    if kind == "classify":
        shutil.copytree(small_shapes / "classify" / "val", root / "val")
        ckpt = make_checkpoint(tmp_path / "c.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    else:
        for sub in ("images", "masks"):
            shutil.copytree(small_shapes / sub / "val", root / sub / "val")
        ckpt = make_checkpoint(tmp_path / "s.pt", "segment_shapes.yaml", ["data.imgsz=64"], ["background", *SHAPES])
    out = tmp_path / "val_out"
    assert main(["val", str(ckpt), f"data.root={root}", "train.device=cpu", "--out", str(out)]) == 0
    metrics = json.loads((out / "val_metrics.json").read_text())
    assert ("accuracy" if kind == "classify" else "miou") in metrics
    assert (out / "confusion_matrix.png").is_file()
