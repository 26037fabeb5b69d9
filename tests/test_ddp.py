"""DDP: two CPU processes (gloo) launched by torchrun train the same replica; only rank 0 writes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvapps.checkpoint import load_checkpoint
from cvapps.data.synth import SynthSpec, generate_shapes
from cvapps.engine.distributed import DUMP_ENV, DistContext, all_true

ROOT = Path(__file__).resolve().parents[1]


def run_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group, so a timeout also ends torchrun's workers."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def test_all_true_without_ddp_is_plain_bool() -> None:
    ctx = DistContext()
    assert all_true(torch.tensor(True), ctx) is True
    assert all_true(False, ctx) is False


def test_torchrun_two_cpu_ranks_hold_identical_weights(tmp_path: Path) -> None:
    data = generate_shapes(tmp_path / "data", SynthSpec(n_train=2, n_val=1, imgsz=48, n_crops_per_class=(8, 3),
                                                        crop_size=32, video_frames=1), progress=False)
    out, dump = tmp_path / "run", tmp_path / "ranks"
    env = {**os.environ, DUMP_ENV: str(dump), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    # --standalone: a local rendezvous on a free port (parallel test runs do not collide).
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "cvapps", "train",
           str(ROOT / "configs" / "classify_shapes.yaml"), "train.epochs=2", "train.batch=4",
           f"data.root={data / 'classify'}", "data.imgsz=32", "train.device=cpu", f"out={out}", "--quiet"]
    proc = run_group(cmd, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # 24 train images / 2 ranks / batch 4 = 3 steps per rank and epoch.
    assert "2 processes" in proc.stdout
    assert proc.stdout.count("epoch 2:") == 1, "only rank 0 logs"

    w0 = torch.load(dump / "rank0.pt", weights_only=True)
    w1 = torch.load(dump / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ in {k}"
    # rank 0 saved exactly the replica the ranks share ...
    ckpt = load_checkpoint(out / "last.pt", "classify")
    assert ckpt["epoch"] == 2
    for k in w0:
        assert torch.equal(ckpt["model"][k], w0[k])
    # ... and only rank 0 wrote: one set of outputs, no stray temporaries of a second writer.
    names = sorted(p.name for p in out.iterdir())
    assert {"last.pt", "best.pt", "metrics.csv"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")]
    lines = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 3  # header + 2 epochs, written once each
    # Optimizer steps per epoch = steps of one rank (the sampler splits the data).
    steps = ckpt["train_state"]["scheduler"]["last_epoch"]
    assert steps == 2 * 3, steps
    shutil.rmtree(dump)
