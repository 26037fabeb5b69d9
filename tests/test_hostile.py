"""Hostile input through every command: no traceback, no hang, bounded memory, inputs untouched,
and no code run from a model or config file (the corpus is tests/hostile_corpus.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_probe import one_line_error, run_cli
from hostile_corpus import input_state, make_evil_pickle, make_hostile_images
from tiny_checkpoints import ROOT, SHAPES, make_checkpoint

from cvapps.cli import main

#: Peak resident memory any one command may reach on the hostile corpus (a predict run on one good
#: image peaks at ~0.9 GiB, mostly torch + ultralytics; decoding the HDR bomb alone takes 3.3 GiB).
RSS_LIMIT_MB = 1536


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, dict[str, bool], dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("hostile")
    images = root / "images"
    expected = make_hostile_images(images)
    models = root / "models"
    models.mkdir()
    ckpts = {
        "classify": make_checkpoint(models / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES),
        "segment": make_checkpoint(models / "seg.pt", "segment_shapes.yaml", ["data.imgsz=64"],
                                   ["background", *SHAPES]),
        "detect": make_checkpoint(models / "yolo.pt", "yolo_shapes.yaml", ["data.imgsz=64"], SHAPES, [1, 2, 3]),
    }
    marker = root / "MARKER"
    make_evil_pickle(models / "evil.pt", marker)
    return images, expected, ckpts, marker


@pytest.mark.parametrize("command", ["classify", "segment", "detect"])
def test_hostile_images_every_predict_command(command: str, hostile, tmp_path: Path) -> None:
    images, expected, ckpts, marker = hostile
    before = input_state(images)
    out = tmp_path / "out"
    rc, stdout, err, peak = run_cli([command, str(images), "--model", str(ckpts[command]), "--out", str(out),
                                     "--device", "cpu", "--batch", "2", "--quiet"])
    assert rc == 0 and "Traceback" not in err, err[-3000:]
    good = [n for n, ok in expected.items() if ok]
    assert f"processed {len(good)} images" in stdout, stdout + err
    for name, ok in expected.items():
        if not ok:
            assert any(ln.startswith("skipped") and name in ln for ln in err.splitlines()), (name, err)
    assert input_state(images) == before, "inputs must stay byte-identical"
    print(f"{command} over the hostile corpus: peak RSS {peak:.0f} MB")
    assert peak < RSS_LIMIT_MB, f"peak RSS {peak:.0f} MB"
    if command == "classify":
        rows = (out / "predictions.csv").read_text(encoding="utf-8").strip().splitlines()[1:]
        assert len(rows) == len(good)
        assert any("bad" in r and "name.png" in r for r in rows), rows  # the non-UTF-8 name, escaped
    assert not marker.exists()


def test_out_never_lands_on_inputs(hostile, tmp_path: Path) -> None:
    images, _, ckpts, _ = hostile
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes((images / "good.jpg").read_bytes())
    before = input_state(photos)
    for args, cwd in ((["detect", str(photos), "--out", str(photos)], None),
                      (["detect", "a.jpg", "--out", "."], photos)):
        rc, _, err, _ = run_cli([*args, "--model", str(ckpts["detect"]), "--device", "cpu", "--quiet"], cwd=cwd)
        one_line_error(rc, err)
        assert input_state(photos) == before


def test_model_files_never_run_code(hostile, tmp_path: Path) -> None:
    images, _, _, marker = hostile
    evil = images.parent / "models" / "evil.pt"
    rc, _, err, _ = run_cli(["detect", str(images / "good.jpg"), "--model", str(evil), "--out", str(tmp_path / "o"),
                             "--device", "cpu", "--quiet"])
    one_line_error(rc, err)
    assert "--trust-model" in err and not marker.exists()
    rc, _, err, _ = run_cli(["train", str(ROOT / "configs" / "ultralytics_shapes.yaml"), f"model.model={evil}",
                             f"out={tmp_path / 'u'}", "train.epochs=1", "train.device=cpu", "--quiet"])
    one_line_error(rc, err)
    assert not marker.exists()


def _bad_configs(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    base = (ROOT / "configs" / "classify_shapes.yaml").read_text(encoding="utf-8")
    cases: dict[str, tuple[Path, list[str]]] = {}

    def write(name: str, text: str | bytes) -> Path:
        path = tmp / f"{name}.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return path

    # 10 anchors of 10 aliases each (10**10 strings once expanded), as a data.names value.
    levels = ["&a0 [" + ", ".join(["x"] * 10) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb = "[" + ", ".join(levels) + "]"
    cases["alias bomb"] = (write("bomb", base.replace("names: null", f"names: {bomb}", 1)), [])
    cases["alias bomb override"] = (write("plain0", base), [f"data.names={bomb}"])
    cases["not utf-8"] = (write("latin1", base.encode("utf-8") + b"\n# caf\xe9\n"), [])
    cases["task is a list"] = (write("tasklist", base.replace("task: classify", "task: [classify]", 1)), [])
    plain = write("plain", base)
    cases["Lambda augmentation"] = (plain, ["augment.train=[{Lambda: {image: os.system}}]"])
    cases["negative grad clip"] = (plain, ["train.grad_clip=-5"])
    cases["bool epochs"] = (plain, ["train.epochs=true"])
    cases["huge imgsz"] = (plain, ["data.imgsz=100000"])
    existing = tmp / "a_file"
    existing.write_text("keep me\n")
    cases["out is a file"] = (plain, [f"out={existing}"])
    cases["out unwritable"] = (plain, ["out=/proc/cvapps_x"])
    return cases


def test_hostile_configs_are_one_line_errors(tmp_path: Path, capsys) -> None:
    for name, (path, overrides) in _bad_configs(tmp_path).items():
        rc = main(["train", str(path), *overrides, "data.root=" + str(ROOT / "sample_data" / "shapes" / "classify"),
                   "train.device=cpu", "--quiet"])
        err = capsys.readouterr().err
        assert rc in (1, 2), (name, err)
        one_line_error(rc, err)
    assert (tmp_path / "a_file").read_text() == "keep me\n"


def test_hostile_checkpoints_and_annotations(hostile, tmp_path: Path, capsys) -> None:
    _, _, ckpts, _ = hostile
    ckpt = torch.load(ckpts["classify"], weights_only=True)
    missing, shapes = dict(ckpt), dict(ckpt)
    missing["model"] = {k: v for i, (k, v) in enumerate(ckpt["model"].items()) if i}
    first = next(iter(ckpt["model"]))
    shapes["model"] = {**ckpt["model"], first: torch.zeros(3, 3)}
    data = ROOT / "sample_data" / "shapes" / "classify"
    for name, content in (("missing", missing), ("shapes", shapes)):
        torch.save(content, tmp_path / f"{name}.pt")
        rc = main(["val", str(tmp_path / f"{name}.pt"), f"data.root={data}", "train.device=cpu"])
        one_line_error(rc, capsys.readouterr().err)
        rc = main(["classify", str(data / "val"), "--model", str(tmp_path / f"{name}.pt"), "--out",
                   str(tmp_path / "o"), "--quiet"])
        one_line_error(rc, capsys.readouterr().err)

    # COCO files: nested 100,000 deep; iscrowd of the wrong kind.
    ds = tmp_path / "ds"
    (ds / "images" / "train").mkdir(parents=True)
    (ds / "annotations").mkdir()
    ann = ds / "annotations" / "train.json"
    ann.write_text("[" * 100_000 + "]" * 100_000)
    rc = main(["data", "check", str(ds)])
    one_line_error(rc, capsys.readouterr().err)
    from PIL import Image

    Image.new("RGB", (32, 32)).save(ds / "images" / "train" / "a.jpg")
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 32}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "iscrowd": "yes"}],
        "categories": [{"id": 1, "name": "circle"}]}))
    main(["data", "check", str(ds)])
    text = "".join(capsys.readouterr())
    assert "Traceback" not in text and "iscrowd" in text, text


def test_hostile_merge_json(tmp_path: Path, capsys) -> None:
    a, b, nan = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "nan.json"
    result = [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]
    a.write_text(json.dumps(result))
    b.write_text(json.dumps([{**result[0], "image_id": 2}]))
    nan.write_text(json.dumps([{**result[0], "score": float("nan")}]))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    before = {p: p.read_bytes() for p in (a, b, nan, deep)}
    for args in ([str(a), str(a), str(b)],                   # output is an input
                 [str(tmp_path / "m.json"), str(a), str(a)],  # the same input twice
                 [str(tmp_path / "m.json"), str(a), str(nan)],
                 [str(tmp_path / "m.json"), str(deep)],
                 [str(tmp_path), str(a), str(b)]):           # output is a folder
        rc = main(["merge-json", *args])
        one_line_error(rc, capsys.readouterr().err)
    assert {p: p.read_bytes() for p in before} == before
