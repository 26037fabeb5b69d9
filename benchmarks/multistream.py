#!/usr/bin/env python
"""N live streams through one batched model vs N separate processes (one per stream): throughput.

    python benchmarks/multistream.py [--streams 4] [--seconds 30] [--model CKPT] [--imgsz 320]
                                     [--device auto] [--fps 24]

Serves the sample video N times with ffmpeg on 127.0.0.1 (MPEG-TS over TCP, looping, in real time at
``--fps``), then runs, in turn:

* batched: one ``cvapps detect streams.txt --batch N`` (every stream's frames interleaved, one
  forward pass per N frames);
* separate: N ``cvapps detect tcp://...`` processes at once, one per stream (``--batch 1``: each
  camera's newest frame right away, as a process per camera runs).

Each run is stopped with SIGINT after ``--seconds`` (outputs are still written: annotated videos and
JSON lines) and reports its own frames per second over its run (after the model is loaded). Prints
both totals and ratio = batched / separate (> 1: one batched model serves more frames). Frames the
model could not keep up with are dropped by the keep-newest readers, so totals are what each setup
can serve. Without --model a randomly initialised YOLO detector of configs/yolo_shapes.yaml at
``--imgsz`` is used (weights do not change the cost). Needs the ffmpeg binary.

Measured on the shared 2-core CPU machine (load ~9 from other jobs), 4 streams of 320x240 at 24 fps,
random YOLO at 160 px, 20 s each, OMP_NUM_THREADS=1: batched 87.2 frames/s (of 96 offered),
separate 55.7 frames/s (15.0 + 12.4 + 12.4 + 15.9): ratio 1.57.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "shapes" / "video" / "shapes.mp4"
_FPS_LINE = re.compile(r"(\d+) frames in ([\d.]+) s \(([\d.]+) frames/s\)")


def random_checkpoint(path: Path, imgsz: int) -> Path:
    """A randomly initialised YOLO checkpoint (configs/yolo_shapes.yaml) in the trainer's layout."""
    import torch

    from cvapps.checkpoint import save_checkpoint
    from cvapps.tasks import get_task, load_config

    names = ["circle", "square", "triangle"]
    cfg = load_config(ROOT / "configs" / "yolo_shapes.yaml", ["data.root=unused", f"data.imgsz={imgsz}"])
    task = get_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg, names)
    save_checkpoint(path, {"task": task.name, "config": cfg.model_dump(mode="json"), "class_names": names,
                           "category_ids": None, "model": model.state_dict(),
                           "preprocessing": {"imgsz": imgsz, "resize": task.resize_mode,
                                             "in_channels": cfg.model.in_channels}})
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(clip: Path, port: int) -> subprocess.Popen:
    """One ffmpeg server: the clip in a loop, in real time, to the first client on the port."""
    return subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "quiet", "-re", "-stream_loop", "-1", "-i", str(clip),
                             "-c", "copy", "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def detect(source: str, args: argparse.Namespace, ckpt: Path, out: Path, batch: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cvapps", "detect", source, "--model", str(ckpt), "--out", str(out),
                             "--batch", str(batch), "--device", args.device, "--reconnect", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)})


def stop_after(procs: list[subprocess.Popen], outs: list[Path], seconds: float) -> list[float]:
    """SIGINT every run ``seconds`` after all of them write frames (their model loads first); each
    one's frames/s from its timing report."""
    deadline = time.monotonic() + 300
    # the annotated video's temp file appears with the first frame written
    while not all(out.is_dir() and any(f.name.startswith(".") and ".mp4." in f.name for f in out.iterdir())
                  for out in outs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit("a run did not start writing frames: " + " | ".join(
                (p.communicate()[1] or "")[-500:] for p in procs if p.poll() is not None))
        time.sleep(0.2)
    time.sleep(seconds)
    for p in procs:
        p.send_signal(signal.SIGINT)
    rates = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        m = _FPS_LINE.search(err)
        if m is None:
            raise SystemExit(f"no timing report from a run (exit {p.returncode}):\n{err[-2000:]}")
        rates.append(float(m.group(3)))
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0, help="how long each setup runs (default 30)")
    ap.add_argument("--model", default=None, help="checkpoint (default: a random YOLO at --imgsz)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fps", type=float, default=24.0, help="frame rate each server sends (default 24)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS of every run (default 1: N processes with several threads each "
                         "oversubscribe a small CPU, which would favour the batched run)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ckpt = Path(args.model) if args.model else random_checkpoint(tmp / "yolo.pt", args.imgsz)
        clip = tmp / "clip.ts"  # encoded once: the servers only copy it (little CPU of their own)
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(SAMPLE), "-an", "-r", str(args.fps),
                        "-c:v", "mpeg1video", "-q:v", "5", "-f", "mpegts", str(clip)], check=True)
        results = {}
        for setup in ("batched", "separate"):
            ports = [free_port() for _ in range(args.streams)]
            servers = [serve(clip, port) for port in ports]
            urls = [f"tcp://127.0.0.1:{port}" for port in ports]
            try:
                time.sleep(1.0)  # the servers start listening
                if setup == "batched":
                    streams = tmp / "streams.txt"
                    streams.write_text("".join(f"{u}\n" for u in urls))
                    outs = [tmp / "out_batched"]
                    procs = [detect(str(streams), args, ckpt, outs[0], args.streams)]
                else:
                    outs = [tmp / f"out_{i}" for i in range(args.streams)]
                    procs = [detect(u, args, ckpt, out, 1) for u, out in zip(urls, outs)]
                results[setup] = stop_after(procs, outs, args.seconds)
            finally:
                for s in servers:
                    s.kill()
                    s.wait()
            print(f"{setup}: {sum(results[setup]):.1f} frames/s in all "
                  f"({', '.join(f'{r:.1f}' for r in results[setup])} per process)", flush=True)
        offered = args.streams * args.fps
        ratio = sum(results["batched"]) / max(1e-9, sum(results["separate"]))
        print(f"{args.streams} streams at {args.fps:g} fps ({offered:g} frames/s offered); "
              f"throughput ratio batched / separate = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
