"""``cvapps predict``: a single-task checkpoint gives exactly its own command's outputs; options of
another task are refused in one line. (Multitask models: tests/test_multitask.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_checkpoints import SHAPES, make_checkpoint

from cvapps.cli import main as cli


@pytest.mark.parametrize("config,imgsz,names,command,options", [
    ("classify_shapes.yaml", 32, SHAPES, "classify", ["--topk", "2", "--save-images"]),
    ("segment_shapes.yaml", 64, ["background", *SHAPES], "segment", ["--save-json", "--alpha", "0.3"]),
    ("yolo_shapes.yaml", 64, SHAPES, "detect", ["--save-json", "--conf", "0", "--max-det", "5"]),
])
def test_predict_writes_what_the_tasks_own_command_writes(small_shapes: Path, tmp_path: Path, config: str, imgsz: int,
                                                          names: list[str], command: str, options: list[str]) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", config, [f"data.imgsz={imgsz}"], names, None)
    images = small_shapes / "images" / "val"
    for cmd in (command, "predict"):
        assert cli([cmd, str(images), "--model", str(ckpt), "--out", str(tmp_path / cmd), "--quiet", *options]) == 0
    files = {p.relative_to(tmp_path / command): p.read_bytes() for p in (tmp_path / command).rglob("*") if p.is_file()}
    assert len(files) > 8  # the JSON/CSV files and the per-image outputs
    assert {p.relative_to(tmp_path / "predict"): p.read_bytes()
            for p in (tmp_path / "predict").rglob("*") if p.is_file()} == files


def test_predict_refuses_options_of_another_task(small_shapes: Path, tmp_path: Path, capsys) -> None:
    ckpt = make_checkpoint(tmp_path / "c.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    out = tmp_path / "out"
    assert cli(["predict", str(small_shapes / "images" / "val"), "--model", str(ckpt), "--out", str(out),
                "--conf", "0.1", "--save-json", "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: --conf, --save-json: not an option for a classify model ({ckpt})"]
    assert not out.exists()
