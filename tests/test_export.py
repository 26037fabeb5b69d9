"""ONNX export: parity with PyTorch in onnxruntime, metadata, and the same CLI on model.onnx."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cvapps.cli import main  # noqa: E402
from cvapps.errors import CheckpointError, CvappsError  # noqa: E402
from cvapps.export import ONNX_FORMAT, export_onnx, read_onnx_metadata  # noqa: E402
from cvapps.tasks import OnnxExport, get_task  # noqa: E402
from tiny_checkpoints import SHAPES, make_checkpoint  # noqa: E402
from tiny_images import write_images  # noqa: E402

PARITY_ATOL = {name: get_task(name).onnx.parity_atol for name in ("segment", "yolo")}  # as the tasks declare



def test_classify_export_parity_metadata_and_cli(tmp_path: Path, capsys) -> None:
    ckpt = make_checkpoint(tmp_path / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    out = tmp_path / "cls.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(out), "--opset", "17"]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out

    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["format"] == ONNX_FORMAT and meta["task"] == "classify"
    assert json.loads(meta["class_names"]) == SHAPES
    assert json.loads(meta["preprocessing"]) == {"imgsz": 32, "resize": "stretch", "in_channels": 3}
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"  # dynamic batch, not a fixed size
    assert read_onnx_metadata(out)["class_names"] == SHAPES

    # The same command runs the .pt and the .onnx; the predictions agree.
    images = write_images(tmp_path / "images")
    for model, dest in ((ckpt, "pt"), (out, "onnx")):
        assert main(["classify", str(images), "--model", str(model), "--out", str(tmp_path / dest),
                     "--batch", "2", "--quiet", "--device", "cpu"]) == 0
    rows = {m: list(csv.DictReader(open(tmp_path / m / "predictions.csv"))) for m in ("pt", "onnx")}
    assert len(rows["pt"]) == 3 and [r["label"] for r in rows["pt"]] == [r["label"] for r in rows["onnx"]]
    for a, b in zip(rows["pt"], rows["onnx"]):
        assert abs(float(a["score"]) - float(b["score"])) < 1e-3


def test_segment_and_yolo_export_parity(tmp_path: Path) -> None:
    seg = make_checkpoint(tmp_path / "seg.pt", "segment_shapes.yaml", ["data.imgsz=64"], ["background", *SHAPES])
    report = export_onnx(seg)
    assert report.path == tmp_path / "seg.onnx" and report.batches_checked == (1, 3)
    assert report.max_abs_diff <= PARITY_ATOL["segment"]

    yolo = make_checkpoint(tmp_path / "yolo.pt", "yolo_shapes.yaml", ["data.imgsz=64"], SHAPES, [1, 2, 3])
    report = export_onnx(yolo, tmp_path / "yolo.onnx")
    assert report.task == "yolo" and report.max_abs_diff <= PARITY_ATOL["yolo"]
    assert read_onnx_metadata(report.path)["category_ids"] == [1, 2, 3]

    # segment / detect run the ONNX model through the same predictor as the .pt.
    from cvapps.engine.load import load_model
    from cvapps.structures import Frame

    img = cv2.imread(str(write_images(tmp_path / "im", 1, (50, 70)) / "img0.png"))
    for pt, task in ((seg, "segment"), (yolo, ("faster_rcnn", "yolo"))):
        ref = load_model(pt, tasks=task, device="cpu").predictor()
        got = load_model(pt.with_suffix(".onnx"), tasks=task, device="cpu").predictor()
        assert got.class_names == ref.class_names and got.imgsz == ref.imgsz
        (_, a), = ref.predict([Frame(img, "x.png")], conf=0.0)
        (_, b), = got.predict([Frame(img, "x.png")], conf=0.0)
        a, b = (p.semantic if task == "segment" else p.detections for p in (a, b))
        if task == "segment":
            assert a.mask.shape == img.shape[:2] and (a.mask == b.mask).mean() > 0.999
        else:
            # Untrained scores nearly tie, so NMS may keep a different set: compare the raw outputs
            # the predictor feeds to NMS, and the best detection.
            x = torch.rand(2, 3, 64, 64)
            with torch.no_grad():
                assert torch.allclose(ref.model(x), got.model(x), atol=PARITY_ATOL["yolo"], rtol=1e-3)
            assert len(a.boxes) > 0 and len(b.boxes) > 0
            assert abs(float(a.scores[0]) - float(b.scores[0])) < 1e-4


def test_failed_parity_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    ckpt = make_checkpoint(tmp_path / "c.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    task = get_task("classify")
    monkeypatch.setattr(task, "onnx", OnnxExport(task.onnx.outputs, -1.0))  # no output can be this close
    with pytest.raises(CvappsError, match="export check failed"):
        export_onnx(ckpt)
    assert not (tmp_path / "c.onnx").exists()


def test_export_refusals_are_one_line_errors(tmp_path: Path, capsys) -> None:
    frcnn = make_checkpoint(tmp_path / "f.pt", "faster_rcnn_shapes.yaml",
                            ["data.imgsz=64", "model.backbone=tiny", "model.pretrained=false"], SHAPES)
    assert main(["export", str(frcnn)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: export: Faster R-CNN is not exported") and err.count("\n") == 1
    assert not (tmp_path / "f.onnx").exists()

    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("not a model")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        read_onnx_metadata(bogus)
    assert main(["classify", str(tmp_path), "--model", str(bogus), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "not a readable ONNX model" in capsys.readouterr().err

    # An ONNX file cvapps did not write (no metadata) is refused by name, and so is the wrong task.
    ckpt = make_checkpoint(tmp_path / "c.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    path = export_onnx(ckpt).path
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(CheckpointError, match="not a cvapps ONNX export"):
        read_onnx_metadata(tmp_path / "plain.onnx")
    assert main(["segment", str(tmp_path), "--model", str(path), "--out", str(tmp_path / "o2"), "--quiet"]) == 1
    assert "is a 'classify' model" in capsys.readouterr().err
