"""A model file never runs code and hostile model files use bounded memory (corpus: tests/model_corpus.py).

Most of the corpus runs in this process through ``cvapps.load`` (each file's own peak RSS measured
by resetting the high-water mark); a representative handful runs through the CLI in new processes.
Real files saved by ultralytics load without --trust-model and predict exactly as a full unpickle.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_probe import one_line_error, peak_during, rss_mb, run_cli
from model_corpus import make_corpus
from tiny_checkpoints import ROOT, SHAPES, make_checkpoint

import cvapps
from cvapps.checkpoint import load_checkpoint
from cvapps.engine.load import load_model
from cvapps.errors import CheckpointError, CvappsError
from cvapps.io.archive import check_torch_archive
from cvapps.tasks.ultralytics_files import load_pickled_model

#: Peak resident memory of one process on any hostile file (torch + ultralytics alone take ~0.6 GiB).
RSS_LIMIT_MB = 2048
YAMLS = {"detect": "yolov8n.yaml", "segment": "yolov8n-seg.yaml", "classify": "yolov8n-cls.yaml"}


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch) -> None:
    monkeypatch.delenv("CVAPPS_TRUST_MODEL", raising=False)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    """Files written by ultralytics' own save from the yolov8n detect / seg / cls yamls."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    for task, spec in YAMLS.items():
        YOLO(spec).save(folder / f"{task}.pt")
    return {task: folder / f"{task}.pt" for task in YAMLS}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, real) -> tuple[Path, Path, dict[str, Path]]:
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("corpus")
    marker = folder / "MARKER"
    torch.manual_seed(0)
    trees = {task: YOLO(spec).model for task, spec in YAMLS.items()}
    files = make_corpus(folder, marker, trees, real)
    assert not marker.exists() and len(files) > 150
    return folder, marker, files


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    return [t for v in out for t in _flat(v)] if isinstance(out, (list, tuple)) else []


def test_every_hostile_file_is_a_one_line_error_and_runs_nothing(corpus, monkeypatch) -> None:
    folder, marker, files = corpus
    monkeypatch.chdir(folder)  # where the yaml's torch_safe_load("evil.pt") would find its file
    peaks, own_peaks = {}, True
    for name, path in files.items():
        before = rss_mb()
        result, peak, own = peak_during(lambda p=path: cvapps.load(p, device="cpu"))
        own_peaks &= own
        peaks[name] = (peak, peak - before)
        assert not marker.exists(), f"{name}: code ran"
        assert isinstance(result, CvappsError), f"{name}: loaded or raised {type(result).__name__}: {result}"
        msg = str(result)
        assert "\n" not in msg and len(msg) - len(str(path)) < 320 and str(path) in msg, (name, msg)
        if name.startswith(("reduce-", "newobj", "build-", "top-", "model-", "nested-", "real-model-", "tampered-real-r",
                            "tampered-real-o", "torch-linear", "torchvision")):
            assert "--trust-model" in msg, (name, msg)  # refused as needing a full unpickle
        assert peak < RSS_LIMIT_MB, f"{name}: peak RSS {peak:.0f} MB"
    worst = sorted(peaks.items(), key=lambda kv: -kv[1][1])[:4]
    print(f"\n{len(files)} hostile files in process ({'own' if own_peaks else 'cumulative'} peaks), largest rises: "
          + ", ".join(f"{n} {p:.0f} MB (+{d:.0f})" for n, (p, d) in worst))


def test_the_payloads_are_live_when_fully_unpickled(corpus, monkeypatch) -> None:
    """The corpus is not refused for trivial reasons: trusted, the same files do run their code."""
    from cvapps.tasks.ultralytics_native import trainable_model

    folder, marker, files = corpus
    monkeypatch.chdir(folder)
    cases = {"eval of the activation": lambda: load_pickled_model(files["reduce-DetectionModel-p2"], trust=True),
             "torch_safe_load as a module": lambda: load_pickled_model(files["reduce-yaml-module-function-p4"], True),
             "getattr(Path, 'touch')": lambda: load_pickled_model(files["top-getattr-touch-p2"], trust=True),
             "its stored yaml, rebuilt": lambda: trainable_model(str(files["build-detect-yaml-activation"]),
                                                                 folder / "run", True),
             "CVAPPS_TRUST_MODEL=1": lambda: (monkeypatch.setenv("CVAPPS_TRUST_MODEL", "1"),
                                              load_pickled_model(files["reduce-PoseModel-p5"]))}
    try:
        for what, case in cases.items():
            with contextlib.suppress(Exception):
                case()
            assert marker.exists(), f"{what}: the payload did not run"
            marker.unlink()
    finally:
        marker.unlink(missing_ok=True)


@pytest.mark.parametrize("task", list(YAMLS))
def test_real_ultralytics_files_load_untrusted_and_predict_as_a_full_unpickle(real, task: str) -> None:
    safe = load_pickled_model(real[task])
    full = load_pickled_model(real[task], trust=True)
    a, b = safe["model"].eval(), full["model"].eval()
    assert type(a) is type(b) and a.names == b.names and a.yaml == b.yaml
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = _flat(a(x)), _flat(b(x))
    assert len(got) == len(want) > 0 and all(torch.equal(g, w) for g, w in zip(got, want))
    if task != "classify":  # and through the whole predictor (fused, letterboxed, NMS)
        image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
        p1 = load_model(real[task], device="cpu", imgsz=64).predictor()(image, conf=0.0, max_det=5)
        p2 = load_model(real[task], device="cpu", imgsz=64, trust=True).predictor()(image, conf=0.0, max_det=5)
        assert torch.equal(p1.detections.boxes, p2.detections.boxes) and torch.equal(p1.detections.scores, p2.detections.scores)
    else:
        with pytest.raises(CvappsError, match="is an ultralytics classify model; cvapps runs ultralytics detect"):
            load_model(real[task], device="cpu")


def test_training_checkpoint_with_ema_and_optimizer_loads_its_ema(tmp_path: Path) -> None:
    """The layout ultralytics' trainer saves mid-run: ``ema`` (half), ``optimizer``, numpy metrics."""
    from ultralytics import YOLO

    torch.manual_seed(1)
    model = YOLO("yolov8n.yaml").model
    ema = YOLO("yolov8n.yaml").model.half()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.rand(1, 3, 64, 64)).__class__  # noqa: B018 - a forward pass, then a step for optimizer state
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    path = tmp_path / "last.pt"
    torch.save({"epoch": 3, "best_fitness": np.float64(0.5), "model": None, "ema": ema, "updates": 7,
                "optimizer": optimizer.state_dict(), "train_args": {"imgsz": 64, "data": str(tmp_path)},
                "train_metrics": {"metrics/mAP50(B)": np.float64(0.25)}, "date": "x", "version": "8.4"}, path)
    safe, full = load_pickled_model(path), load_pickled_model(path, trust=True)
    assert safe["train_metrics"] == {"metrics/mAP50(B)": 0.25} and safe["epoch"] == 3
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(g, w) for g, w in zip(_flat(safe["model"].eval()(x)), _flat(full["model"].eval()(x))))


def test_hostile_files_through_the_cli_in_new_processes(corpus, tmp_path: Path) -> None:
    folder, marker, files = corpus
    image = ROOT / "sample_data" / "shapes" / "images" / "val"
    image = next(image.glob("*.jpg"))
    runs = [
        (["detect", str(image), "--model", str(files["reduce-DetectionModel-p2"])], None),
        (["classify", str(image), "--model", str(files["newobj_ex-YOLOv10DetectionModel-p5"])], None),
        (["segment", str(image), "--model", str(files["build-segment-yaml-activation"])], None),
        (["export", str(files["reduce-yaml-module-function-p2"]), "--out", str(tmp_path / "m.onnx")], folder),
        (["summary", str(files["tampered-real-reduce"])], None),
        (["val", str(files["cvapps-bytearray-3gib"]), f"data.root={ROOT / 'sample_data' / 'shapes'}"], None),
        (["detect", str(image), "--model", str(files["bomb-data-pkl-3gib"])], None),
        (["detect", str(image), "--model", str(files["real-model-system-in-attribute"]), "--ray"], None),
    ]
    for args, cwd in runs:
        if args[0] in ("detect", "classify", "segment"):
            args = [*args, "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
        rc, _, err, peak = run_cli(args, cwd=cwd)
        one_line_error(rc, err)
        print(f"cvapps {args[0]} {Path(args[1] if args[0] in ('export', 'summary', 'val') else args[3]).name}: "
              f"peak RSS {peak:.0f} MB")
        assert peak < RSS_LIMIT_MB and not marker.exists(), (args, peak)


def test_ray_actor_loads_the_same_safe_way(corpus, tmp_path: Path) -> None:
    """What each Ray actor runs (PredictActor: the model file's bytes, then the one loader)."""
    pytest.importorskip("ray")
    from cvapps.engine.ray_workers import PredictActor

    _, marker, files = corpus
    for name in ("reduce-DetectionModel-p4", "tampered-real-reduce", "bomb-numel-claims-1e12"):
        with pytest.raises(CheckpointError):
            PredictActor(None, str(files[name]), device="cpu")
    assert not marker.exists()


def test_a_real_ray_run_refuses_in_its_actor(corpus, tmp_path: Path) -> None:
    """run_ray with a model file ships its bytes to the actors, which load it: refused there."""
    pytest.importorskip("ray.data")
    from cvapps.engine.ray_predict import RayCluster, RayModel, run_ray

    _, marker, files = corpus
    image = next((ROOT / "sample_data" / "shapes" / "images" / "val").glob("*.jpg"))
    with pytest.raises(Exception) as info:  # Ray reports the actor's CheckpointError as its own error type
        run_ray(RayModel(str(files["reduce-DetectionModel-p4"]), device="cpu"), [str(image)], [], tmp_path / "out",
                RayCluster(num_cpus=2), progress=False)
    assert "not a cvapps checkpoint nor a plain ultralytics model" in str(info.value) and not marker.exists()


def test_archive_checks_refuse_bombs_before_reading(corpus) -> None:
    _, _, files = corpus
    expected = {"bomb-data-pkl-3gib": "zip bomb", "bomb-storage-declared-3gib": "declares 3221225472 bytes",
                "bomb-storage-deflated-1gib": "zip bomb", "bomb-many-entries": "entries"}
    for name, words in expected.items():
        with pytest.raises(CheckpointError, match=words):
            check_torch_archive(files[name])
        with pytest.raises(CheckpointError, match=words):  # the cvapps loader uses the same check
            load_checkpoint(files[name])


def test_cvapps_checkpoints_refuse_nan_wrong_types_and_oversized_views(tmp_path: Path, corpus) -> None:
    _, _, files = corpus
    path = make_checkpoint(tmp_path / "c.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    raw = torch.load(path, weights_only=True)
    name = next(k for k, v in raw["model"].items() if v.is_floating_point())
    raw["model"][name] = torch.full_like(raw["model"][name], float("nan"))
    torch.save(raw, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=f"weight {name} holds NaN"):
        load_model(tmp_path / "nan.pt")
    for case, words in (("cvapps-model-is-a-string", "are a str"), ("cvapps-model-is-a-list", "are a list"),
                        ("cvapps-model-is-a-dict-of-strings", "non-tensors"),
                        ("cvapps-zero-stride-view", "larger than its storage")):
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(files[case])
    assert load_checkpoint(path)["task"] == "classify"  # the untouched one still loads


def test_messages_say_what_the_file_is(corpus, tmp_path: Path) -> None:
    _, _, files = corpus
    for where in ("train_args", "names", "submodule", "attribute", "optimizer"):  # a real model with one call added
        with pytest.raises(CheckpointError, match="it names os.system, which no plain model file does"):
            load_model(files[f"real-model-system-in-{where}"])
    with pytest.raises(CheckpointError, match="calls ultralytics.nn.tasks.DetectionModel with arguments"):
        load_model(files["reduce-DetectionModel-p3"])
    with pytest.raises(CheckpointError, match="layer 0 module .* is not an ultralytics or torch layer"):
        load_model(files["build-detect-yaml-module-backbone"])
    with pytest.raises(CheckpointError, match="activation .* is outside what cvapps accepts"):
        load_model(files["build-segment-yaml-activation"])
    with pytest.raises(CheckpointError, match="Sequential, not one of the ultralytics model classes"):
        load_model(files["not-ultralytics-sequential"])
    with pytest.raises(CheckpointError, match="not a torch zip archive"):
        load_model(files["text-file"])
    with pytest.raises(CheckpointError, match=r"weight \S+ holds NaN"):
        load_model(files["ultralytics-nan-weights"])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    pytest.importorskip("onnxruntime")
    with pytest.raises(CheckpointError, match=r"not a readable ONNX model: Protobuf parsing failed"):
        load_model(bad)


def test_every_shipped_ultralytics_yaml_passes_the_closed_lists() -> None:
    """An ultralytics upgrade that adds a layer, a key or an argument form fails here, not for users."""
    import ultralytics
    import yaml

    from cvapps.tasks.ultralytics_rebuild import validate_yaml

    root = Path(ultralytics.__file__).parent / "cfg" / "models"
    checked = 0
    for path in sorted(root.rglob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if any(row[2] in ("TorchVision",) or "YOLOE" in row[2] or row[2] in ("SemanticSegment", "Depth")
               for row in spec["backbone"] + spec["head"]):
            continue  # layers cvapps does not rebuild without --trust-model
        validate_yaml({**spec, "scale": next(iter(spec.get("scales", {})), ""), "yaml_file": path.name, "channels": 3})
        checked += 1
    assert checked > 40
    from ultralytics.nn import tasks

    from cvapps.tasks.ultralytics_rebuild import (
        MODEL_CLASSES,
        TORCH_LAYERS,
        ULTRALYTICS_LAYERS,
    )

    for name in ULTRALYTICS_LAYERS:  # each closed-list name is still an nn.Module class where parse_model looks
        assert isinstance(getattr(tasks, name, None), type) and issubclass(getattr(tasks, name), torch.nn.Module), name
    assert all(issubclass(getattr(torch.nn, name), torch.nn.Module) for name in TORCH_LAYERS)
    assert all(issubclass(getattr(tasks, attr), torch.nn.Module) for attr, _ in MODEL_CLASSES.values())
