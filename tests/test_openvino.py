"""OpenVINO export (fp32 / INT8 folders), `--runtime`, and the `auto` conversion cache.

These tests run in a child pytest process (:func:`test_openvino_tests_in_their_own_process`): with
OpenVINO's runtime loaded into the long-lived suite process, the full suite died of a segmentation
fault minutes later, far from any OpenVINO call (not reproduced in shorter runs); a child keeps that
runtime's threads out of the other tests' process."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

CHILD_ENV = "CVAPPS_OPENVINO_TEST_CHILD"
IN_CHILD = os.environ.get(CHILD_ENV) == "1"
for _needed in ("openvino", "onnxruntime"):  # found, not imported: the parent must not load them
    if importlib.util.find_spec(_needed) is None:
        pytest.skip(f"{_needed} is not installed (pip install -e '.[openvino]')", allow_module_level=True)

from tiny_checkpoints import ROOT, SHAPES, make_checkpoint, multitask_checkpoint  # noqa: E402
from tiny_images import write_images  # noqa: E402

import cvapps  # noqa: E402
from cvapps.cli import main  # noqa: E402
from cvapps.engine import runtime as runtime_mod  # noqa: E402
from cvapps.engine.load import LoadOptions, load_model, load_on_runtime  # noqa: E402
from cvapps.engine.onnx_graph import EvalForward, prepare_yolo_head  # noqa: E402
from cvapps.engine.openvino_model import OPENVINO_FORMAT, read_openvino_metadata  # noqa: E402
from cvapps.errors import CvappsError  # noqa: E402
from cvapps.export import export_onnx  # noqa: E402
from cvapps.export_openvino import export_openvino  # noqa: E402
from cvapps.tasks import get_task, load_config  # noqa: E402
from cvapps.tasks.multitask_config import MultiTaskConfig  # noqa: E402


def test_openvino_tests_in_their_own_process() -> None:
    if IN_CHILD:
        pytest.skip("the child process itself")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          cwd=ROOT, env={**os.environ, CHILD_ENV: "1"}, capture_output=True, text=True, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert " passed" in done.stdout and "failed" not in done.stdout.splitlines()[-1]


@pytest.fixture(autouse=True)
def _in_the_child(request: pytest.FixtureRequest) -> None:
    if not IN_CHILD and request.node.name != "test_openvino_tests_in_their_own_process":
        pytest.skip("runs in the child process of test_openvino_tests_in_their_own_process")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CVAPPS_CACHE_DIR", str(cache))
    monkeypatch.delenv("CVAPPS_RUNTIME", raising=False)
    return cache



def raw_outputs(path: Path, x: torch.Tensor, runtime: str | None = None) -> list[torch.Tensor]:
    loaded = load_on_runtime(path, runtime, LoadOptions(device="cpu"))
    model = loaded.model.eval()
    if loaded.runtime == "torch":  # its outputs as the exported graph gives them (a multitask dict as a tuple)
        prepare_yolo_head(model)
        model = EvalForward(model)
    with torch.no_grad():
        out = model(x)
    return [o.float() for o in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("config,imgsz,names", [
    ("classify_shapes.yaml", 32, SHAPES),
    ("segment_shapes.yaml", 64, ["background", *SHAPES]),
    ("yolo_shapes.yaml", 64, SHAPES),
])
def test_fp32_folder_matches_torch_and_carries_metadata(tmp_path: Path, config: str, imgsz: int, names) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", config, [f"data.imgsz={imgsz}"], names, [1, 2, 3])
    report = export_openvino(ckpt)
    folder = tmp_path / "m_openvino"
    assert report.folder == folder and sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.bin",
                                                                                   "model.xml"]
    task = get_task(report.task)
    assert report.max_abs_diff is not None and report.max_abs_diff <= task.onnx.parity_atol
    meta = read_openvino_metadata(folder)
    assert meta["format"] == OPENVINO_FORMAT and meta["precision"] == "fp32" and meta["class_names"] == names
    assert meta["category_ids"] == [1, 2, 3] and meta["preprocessing"]["imgsz"] == imgsz

    # The folder (and the .onnx, read by OpenVINO) give PyTorch's raw outputs at another batch size.
    x = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(5))
    ref = raw_outputs(ckpt, x)
    export_onnx(ckpt, check=False)
    for path, runtime in ((folder, None), (ckpt.with_suffix(".onnx"), "openvino")):
        got = raw_outputs(path, x, runtime)
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            assert torch.allclose(a, b, atol=task.onnx.parity_atol, rtol=1e-3)


def test_multitask_folder_and_cli_predict(tmp_path: Path, small_shapes: Path) -> None:
    cfg = load_config(ROOT / "configs" / "multitask_shapes.yaml",
                      [f"data.root={small_shapes}", "data.imgsz=64", "train.device=cpu"])
    assert isinstance(cfg, MultiTaskConfig)
    ckpt = multitask_checkpoint(tmp_path / "mt.pt", cfg, 2)
    folder = export_openvino(ckpt, tmp_path / "mt_ov").folder
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(raw_outputs(folder, x), raw_outputs(ckpt, x)):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)
    images = small_shapes / "images" / "val"
    for model, dest in ((ckpt, "pt"), (folder, "ov")):
        assert main(["segment", str(images), "--model", str(model), "--out", str(tmp_path / dest), "--quiet",
                     "--device", "cpu", "--save-json"]) == 0
    masks = [json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("pt", "ov")]
    assert len(masks[0]) == len(masks[1]) > 0
    assert [m["category_id"] for m in masks[0]] == [m["category_id"] for m in masks[1]]


def test_cli_export_classify_runs_everywhere(tmp_path: Path, capsys) -> None:
    ckpt = make_checkpoint(tmp_path / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    out = tmp_path / "cls_ov"
    assert main(["export", str(ckpt), "--format", "openvino", "--out", str(out)]) == 0
    assert "OpenVINO fp32 matches PyTorch" in capsys.readouterr().out
    images = write_images(tmp_path / "images")
    runs = {"pt": (ckpt, []), "ov": (out, []), "auto": (ckpt, ["--runtime", "auto"])}
    for dest, (model, extra) in runs.items():
        assert main(["classify", str(images), "--model", str(model), "--out", str(tmp_path / dest), "--batch", "2",
                     "--quiet", "--device", "cpu", *extra]) == 0
    rows = {d: list(csv.DictReader((tmp_path / d / "predictions.csv").read_text().splitlines())) for d in runs}
    for dest in ("ov", "auto"):
        assert [r["label"] for r in rows[dest]] == [r["label"] for r in rows["pt"]]
        for a, b in zip(rows["pt"], rows[dest]):
            assert abs(float(a["score"]) - float(b["score"])) < 1e-3
    # a folder cannot run in torch; a non-model folder is not taken for one; refusals are one line
    capsys.readouterr()
    assert main(["classify", str(images), "--model", str(out), "--runtime", "torch", "--out",
                 str(tmp_path / "x"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "is an OpenVINO model folder" in err and err.count("\n") == 1
    assert main(["export", str(ckpt), "--format", "openvino", "--out", str(images)]) == 1
    assert "other files in it" in capsys.readouterr().err


def test_int8_export_prints_fp32_vs_int8_metric(tmp_path: Path, small_shapes: Path, capsys) -> None:
    ckpt = make_checkpoint(tmp_path / "y.pt", "yolo_shapes.yaml", ["data.imgsz=64", f"data.root={small_shapes}"],
                           SHAPES, [1, 2, 3])
    assert main(["export", str(ckpt), "--format", "openvino", "--int8", "--data", str(small_shapes),
                 "--calib", "8"]) == 0
    out = capsys.readouterr().out
    assert "INT8 calibrated on 8 images" in out and "map50 on the val split: fp32" in out and "int8" in out
    folder = tmp_path / "y_int8_openvino"
    meta = read_openvino_metadata(folder)
    assert meta["precision"] == "int8" and meta["calibration_images"] == 8
    # the INT8 model is smaller on disk than the fp32 weights and runs through the predictor
    assert (folder / "model.bin").stat().st_size < 0.5 * ckpt.stat().st_size
    model = cvapps.load(folder, device="cpu")
    assert model.runtime == "openvino" and len(model.predict(small_shapes / "images" / "val")) == 8


def test_faster_rcnn_and_bad_inputs_are_one_line_errors(tmp_path: Path, capsys) -> None:
    frcnn = make_checkpoint(tmp_path / "f.pt", "faster_rcnn_shapes.yaml",
                            ["data.imgsz=64", "model.backbone=tiny", "model.pretrained=false"], SHAPES)
    assert main(["export", str(frcnn), "--format", "openvino"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: export: Faster R-CNN is not exported") and err.count("\n") == 1
    assert not (tmp_path / "f_openvino").exists()
    # auto keeps a model that does not convert in torch (with a note); openvino refuses it
    loaded = load_on_runtime(frcnn, "auto", LoadOptions(device="cpu"))
    assert loaded.runtime == "torch" and "running f.pt in torch" in capsys.readouterr().err
    with pytest.raises(CvappsError, match="Faster R-CNN is not exported"):
        load_on_runtime(frcnn, "openvino", LoadOptions(device="cpu"))
    with pytest.raises(CvappsError, match="unknown runtime 'tensorrt'"):
        load_on_runtime(frcnn, "tensorrt")
    ckpt = make_checkpoint(tmp_path / "c.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    assert main(["export", str(ckpt), "--int8"]) == 1
    assert "go with --format openvino" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--format", "openvino", "--int8", "--data", str(tmp_path / "none")]) == 1
    assert "needs calibration images" in capsys.readouterr().err


def test_auto_converts_once_and_again_when_the_checkpoint_changes(tmp_path: Path, _cache: Path, capsys,
                                                                    monkeypatch) -> None:
    ckpt = make_checkpoint(tmp_path / "c.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    first = load_on_runtime(ckpt, "auto", LoadOptions(device="cpu"))
    assert first.runtime == "openvino" and first.source == str(ckpt)
    assert capsys.readouterr().err.count("converted c.pt to OpenVINO") == 1
    again = load_on_runtime(ckpt, "auto", LoadOptions(device="cpu"))
    assert again.runtime == "openvino" and "converted" not in capsys.readouterr().err  # cached
    folders = [p for p in (_cache / "openvino").iterdir() if p.is_dir()]
    assert len(folders) == 1

    # Other weights written over the same path: converted again, never the stale model.
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k: v + 0.05 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, ckpt)
    x = torch.rand(2, 3, 32, 32)
    got = raw_outputs(ckpt, x, "auto")
    assert "converted c.pt" in capsys.readouterr().err
    assert torch.allclose(got[0], raw_outputs(ckpt, x, "torch")[0], atol=1e-4, rtol=1e-3)
    assert len([p for p in (_cache / "openvino").iterdir() if p.is_dir()]) == 2
    # $CVAPPS_RUNTIME sets the default of the CLI and the API
    assert cvapps.load(ckpt, device="cpu").runtime == "torch"
    monkeypatch.setenv("CVAPPS_RUNTIME", "auto")
    assert cvapps.load(ckpt, device="cpu").runtime == "openvino"


def test_concurrent_first_runs_convert_once(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "c.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    calls: list[int] = []
    lines: list[str] = []

    def load_torch():
        calls.append(1)
        return load_model(ckpt)

    folders: list[Path] = []
    threads = [threading.Thread(target=lambda: folders.append(runtime_mod.cached_openvino(ckpt, load_torch,
                                                                                           lines.append)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(lines) == 1 and len(set(folders)) == 1


def test_without_openvino_the_error_names_the_extra(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "c.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    images = write_images(tmp_path / "images", 1)
    code = ("import sys; sys.modules['openvino'] = None; from cvapps.cli import main; "
            f"sys.exit(main(['classify', {str(images)!r}, '--model', {str(ckpt)!r}, '--runtime', 'openvino', "
            f"'--out', {str(tmp_path / 'o')!r}, '--quiet']))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        'error: the OpenVINO runtime needs the openvino extra: pip install "cvapps[openvino]"'
    # auto without the extra: torch, silently
    code = code.replace("'--runtime', 'openvino'", "'--runtime', 'auto'")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_benchmark_rows_and_failing_runtimes(tmp_path: Path, small_shapes: Path, capsys) -> None:
    from cvapps.benchmark import Row, table

    # A model whose exports fail: torch is measured in its own process, the others are rows with the reason.
    frcnn = make_checkpoint(tmp_path / "f.pt", "faster_rcnn_shapes.yaml",
                            ["data.imgsz=64", "model.backbone=tiny", "model.pretrained=false"], SHAPES)
    out = tmp_path / "bench"
    assert main(["benchmark", str(frcnn), "--data", str(small_shapes), "--out", str(out), "--seconds", "0.05",
                 "--images", "4", "--batch", "2", "--no-metric"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "benchmark.json").read_text())
    assert [(r["runtime"], r["precision"]) for r in rows] == [("torch", "fp32"), ("onnxruntime", "fp32"),
                                                             ("openvino", "fp32"), ("openvino", "int8")]
    assert rows[0]["error"] == "" and rows[0]["model_ips"] > 0 and rows[0]["e2e_ips"] > 0
    assert all("Faster R-CNN is not exported" in r["error"] for r in rows[1:])
    assert printed.count("\n| ") == 5 and "| torch | fp32 |" in printed
    # ratios are to the torch row
    text = table([Row("torch", "fp32", model_ips=10.0, e2e_ips=8.0), Row("openvino", "fp32", model_ips=25.0,
                                                                       e2e_ips=20.0, size_mb=1.5)])
    assert "| openvino | fp32 | 1.50 | - | 25.0 | 2.50x | 20.0 | 2.50x |" in text
    assert main(["benchmark", str(frcnn), "--data", str(tmp_path / "absent")]) == 1
    assert "is not a folder" in capsys.readouterr().err
