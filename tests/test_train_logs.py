"""train.log: metrics.csv and TensorBoard event files carry the same values; callbacks see them too."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from cvapps.data.synth import SynthSpec, generate_shapes
from cvapps.engine.loggers import EpochRun
from cvapps.engine.train import train
from cvapps.errors import ConfigError
from cvapps.tasks import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "classify_shapes.yaml"


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    data = generate_shapes(tmp_path_factory.mktemp("shapes"), SynthSpec(n_train=2, n_val=1, imgsz=48,
                           n_crops_per_class=(8, 2), crop_size=32, video_frames=1), progress=False)
    return data / "classify"


def _args(data: Path, out: Path, log: str) -> list[str]:
    return [f"data.root={data}", f"out={out}", "train.epochs=2", "train.batch=8", "data.imgsz=32",
            "data.workers=0", "train.device=cpu", "augment.train=[]", f"train.log={log}"]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Path, int, int, dict[str, float]]] = []

    def on_epoch_end(self, run: EpochRun, metrics: dict[str, float]) -> None:
        self.calls.append((run.out, run.epoch, len(run.history), metrics))


def test_csv_and_tensorboard_agree_and_callbacks_see_each_epoch(crops: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    recorder, plain = Recorder(), []
    cfg = load_config(CONFIG, _args(crops, out, "[csv,tensorboard]"))
    result = train(cfg, progress=False, log=lambda m: None,
                   callbacks=[recorder, lambda run, metrics: plain.append((run.epoch, metrics))])

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    numeric = [k for k in rows[0] if k != "epoch" and rows[0][k] != ""]
    assert {"train/loss", "val/accuracy", "lr"} <= set(numeric)
    assert tags == set(numeric)  # every metrics.csv value, under the same name, nothing else
    for key in numeric:
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        for s, row in zip(scalars, rows):
            assert s.value == pytest.approx(float(row[key]), abs=1e-6), key

    assert [(c[1], c[2]) for c in recorder.calls] == [(1, 1), (2, 2)]
    assert all(c[0] == out for c in recorder.calls)
    for (_, epoch, _, metrics), row, hist in zip(recorder.calls, rows, result.history):
        assert metrics == hist
        assert metrics["train/loss"] == pytest.approx(float(row["train/loss"]), abs=1e-12)
    assert [(e, m) for e, m in plain] == [(c[1], c[3]) for c in recorder.calls]


def test_tensorboard_only_writes_no_csv(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(load_config(CONFIG, _args(crops, out, "[tensorboard]") + ["train.epochs=1"]), progress=False,
          log=lambda m: None)
    assert list(out.glob("events.out.tfevents.*")) and not (out / "metrics.csv").exists()


def test_unknown_logger_is_a_config_error(crops: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.log.*'wandb'"):
        load_config(CONFIG, _args(crops, tmp_path / "run", "[csv,wandb]"))
    with pytest.raises(ConfigError, match=r"train\.log"):
        load_config(CONFIG, _args(crops, tmp_path / "run", "wandb"))
    assert load_config(CONFIG, _args(crops, tmp_path / "run", "tensorboard")).train.log == ["tensorboard"]
    assert load_config(CONFIG).train.log == ["csv"]


def test_missing_tensorboard_fails_before_training(crops: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    out = tmp_path / "run"
    seen = []
    with pytest.raises(ConfigError, match=r"pip install 'cvapps\[tensorboard\]'"):
        train(load_config(CONFIG, _args(crops, out, "[csv,tensorboard]")), progress=False, log=seen.append,
              callbacks=[lambda run, metrics: seen.append(metrics)])
    assert seen == [] and not list(out.glob("*"))  # nothing trained, nothing written


def test_a_callback_must_be_callable(crops: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="on_epoch_end"):
        train(load_config(CONFIG, _args(crops, tmp_path / "run", "[csv]")), progress=False, callbacks=[42])


def test_native_ultralytics_run_is_logged_too(tmp_path: Path) -> None:
    """Ultralytics' own trainer has no hook of ours: its history is replayed into the loggers at the end."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, calls = tmp_path / "run", []
    cfg = load_config(ROOT / "configs" / "ultralytics_shapes.yaml",
                      [f"data.root={ROOT / 'sample_data' / 'shapes'}", f"out={out}", "model.model=yolov8n.yaml",
                       "data.imgsz=64", "train.epochs=1", "train.device=cpu", "train.log=[csv,tensorboard]"])
    train(cfg, progress=False, log=lambda m: None, callbacks=[lambda run, metrics: calls.append((run.epoch, metrics))])
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [c[0] for c in calls] == [1] and len(rows) == 1
    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    for key in ("train/box_loss", "val/map50"):
        assert [s.step for s in events.Scalars(key)] == [1]
        assert events.Scalars(key)[0].value == pytest.approx(float(rows[0][key]), abs=1e-6)
        assert calls[0][1][key] == pytest.approx(float(rows[0][key]), abs=1e-12)
