"""Training hooks (cvapps.engine.hooks): the events in order with the trainer's state, stopping early,
and hooks next to plain callbacks through cvapps.train(callbacks=[...])."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

import cvapps
from cvapps.checkpoint import load_checkpoint
from cvapps.data.synth import SynthSpec, generate_shapes
from cvapps.engine.hooks import EarlyStopping, HookBase
from cvapps.engine.loggers import EpochRun
from cvapps.engine.train import Trainer, train
from cvapps.errors import CvappsError
from cvapps.tasks import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "classify_shapes.yaml"


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    # 24 train crops, batch 8: 3 steps per epoch.
    data = generate_shapes(tmp_path_factory.mktemp("shapes"), SynthSpec(n_train=2, n_val=1, imgsz=48,
                           n_crops_per_class=(8, 2), crop_size=32, video_frames=1), progress=False)
    return data / "classify"


def _args(data: Path, out: Path, epochs: int) -> list[str]:
    return [f"data.root={data}", f"out={out}", f"train.epochs={epochs}", "train.batch=8", "data.imgsz=32",
            "data.workers=0", "train.device=cpu", "augment.train=[]"]


class Recorder(HookBase):
    """Every event with the trainer's epoch and step, and what after_epoch finds in OUT."""

    def __init__(self, events: list[tuple] | None = None) -> None:
        self.events = [] if events is None else events

    def before_train(self) -> None:
        self.events.append(("before_train", self.trainer.start_epoch))

    def before_epoch(self) -> None:
        self.events.append(("before_epoch", self.trainer.epoch))

    def after_step(self) -> None:
        t = self.trainer
        assert t.losses and float(t.loss.detach()) > 0 and t.model.training
        self.events.append(("after_step", t.epoch, t.step))

    def after_epoch(self) -> None:
        t = self.trainer
        assert isinstance(t, Trainer) and t.is_main
        assert t.row is t.history[-1] and t.row["epoch"] == t.epoch + 1
        assert "val/accuracy" in t.row and "train/loss" in t.row  # evaluation ran before this hook
        assert load_checkpoint(t.out / "last.pt")["epoch"] == t.epoch + 1  # and the checkpoint was written
        self.events.append(("after_epoch", t.epoch))

    def after_train(self) -> None:
        self.events.append(("after_train", len(self.trainer.history)))


def test_a_hook_sees_the_events_in_order_with_the_trainer_state(crops: Path, tmp_path: Path) -> None:
    events: list[tuple] = []
    hook = Recorder(events)
    result = train(load_config(CONFIG, _args(crops, tmp_path / "run", 2)), progress=False, log=lambda m: None,
                   callbacks=[lambda run, metrics: events.append(("callback", run.epoch)), hook])
    steps = [("after_step", e, s) for e in (0, 1) for s in range(3)]
    assert events == [("before_train", 0),
                      ("before_epoch", 0), *steps[:3], ("callback", 1), ("after_epoch", 0),
                      ("before_epoch", 1), *steps[3:], ("callback", 2), ("after_epoch", 1),
                      ("after_train", 2)]
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert {"best.pt", "last.pt", "metrics.csv", "loss.png", "metrics.png"} <= {p.name for p in result.out.iterdir()}

    # Resumed: the hook starts at the epoch after last.pt's.
    events.clear()
    train(load_config(CONFIG, _args(crops, tmp_path / "run", 3) + ["train.resume=true"]), progress=False,
          log=lambda m: None, callbacks=[hook])
    assert events[0] == ("before_train", 2) and events[1] == ("before_epoch", 2) and events[-1] == ("after_train", 3)


class StopAfter(HookBase):
    def __init__(self, epoch: int) -> None:
        self.epoch, self.finished = epoch, False

    def after_epoch(self) -> None:
        if self.trainer.epoch + 1 == self.epoch:
            self.trainer.stop = True

    def after_train(self) -> None:
        self.finished = True


def test_a_hook_can_stop_training_after_an_epoch(crops: Path, tmp_path: Path) -> None:
    out, log, hook = tmp_path / "run", [], StopAfter(1)
    result = train(load_config(CONFIG, _args(crops, out, 3)), progress=False, log=log.append, callbacks=[hook])
    assert [r["epoch"] for r in result.history] == [1] and hook.finished
    assert "training stopped after epoch 1 of 3" in log and log[-1].startswith("done:")
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and (out / "best.pt").exists()
    assert [int(r["epoch"]) for r in csv.DictReader((out / "metrics.csv").open())] == [1]


def test_early_stopping_counts_evaluations_without_improvement(crops: Path, tmp_path: Path) -> None:
    # "epoch" only grows, so in min mode epoch 2 is the first without improvement: patience 1 stops there.
    log: list[str] = []
    result = train(load_config(CONFIG, _args(crops, tmp_path / "run", 4)), progress=False, log=log.append,
                   callbacks=[EarlyStopping(patience=1, metric="epoch", mode="min")])
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert any(m.startswith("early stopping: epoch has not improved in 1 evaluations") for m in log), log
    # The default metric (val/<primary metric>) improves or not; with a large patience nothing stops.
    result = train(load_config(CONFIG, _args(crops, tmp_path / "run2", 2)), progress=False, log=lambda m: None,
                   callbacks=[EarlyStopping(patience=5)])
    assert len(result.history) == 2
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def test_hooks_and_callbacks_through_cvapps_train(crops: Path, tmp_path: Path) -> None:
    hook, seen = Recorder(), []

    class OnEpochEnd:  # the older callback form: an object with on_epoch_end(run, metrics)
        def on_epoch_end(self, run: EpochRun, metrics: dict[str, float]) -> None:
            seen.append((run.epoch, metrics["train/loss"]))

    result = cvapps.train(CONFIG, progress=False, callbacks=[hook, OnEpochEnd()], data__root=crops,
                          out=tmp_path / "run", train__epochs=1, train__batch=8, data__imgsz=32, data__workers=0,
                          train__device="cpu", augment__train=[])
    assert [e[0] for e in hook.events] == ["before_train", "before_epoch", *["after_step"] * 3, "after_epoch",
                                           "after_train"]
    assert seen == [(1, result.history[0]["train/loss"])]


def test_hooks_are_refused_where_another_trainer_trains(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "ultralytics_shapes.yaml",
                      [f"data.root={ROOT / 'sample_data' / 'shapes'}", f"out={tmp_path / 'run'}",
                       "model.model=yolov8n.yaml", "train.epochs=1", "train.device=cpu"])
    with pytest.raises(CvappsError, match="training hook.*fn\\(run, metrics\\)"):
        train(cfg, progress=False, log=lambda m: None, callbacks=[Recorder()])


DDP_SCRIPT = """
import os
import sys
from pathlib import Path
from cvapps.engine.hooks import HookBase
from cvapps.engine.train import train
from cvapps.tasks import load_config

class StopOnRankZero(HookBase):  # as EarlyStopping on val metrics: only rank 0 evaluates
    def after_epoch(self):
        if self.trainer.is_main:
            self.trainer.stop = True

result = train(load_config(sys.argv[1], sys.argv[2:]), progress=False, callbacks=[StopOnRankZero()])
Path(f"trained{os.environ['RANK']}.txt").write_text(str(len(result.history)))  # prints would interleave
"""


def test_under_ddp_every_rank_stops_when_rank_zero_asks(crops: Path, tmp_path: Path) -> None:
    """A stop only rank 0 asks for must end every rank's loop (or the others hang at the next all-reduce)."""
    from test_ddp import _torchrun, run_group

    script = tmp_path / "stop.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = run_group([*_torchrun(), "--standalone", "--nproc_per_node=2", str(script), str(CONFIG),
                      *_args(crops, tmp_path / "run", 3)], env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert [(tmp_path / f"trained{r}.txt").read_text() for r in (0, 1)] == ["1", "1"]  # both left after epoch 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
