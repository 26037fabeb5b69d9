#!/usr/bin/env python
"""Resident memory of a long predict run: RSS at frame 500 vs frame 5,000 must grow <= 50 MB.

    python benchmarks/memory_long_video.py [--frames 5200] [--model CKPT] [--keep VIDEO]

Generates a long video by looping the sample video (320x240), then runs the full pipeline on it
(reader thread, prefetch, model, writer thread into an annotated mp4, per-frame JSON lines and a
COCO JSON) and samples the process RSS from a sink at frames 500 and 5,000. Without --model a
randomly initialised tiny classifier is used (the runtime, not the weights, is under test; a
detector checkpoint can be given with --model). Exit status 1 when the growth exceeds the limit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 50.0


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def make_long_video(path: Path, frames: int, sample: Path) -> None:
    import cv2

    cap = cv2.VideoCapture(str(sample))
    loop = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        loop.append(img)
    cap.release()
    h, w = loop[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, (w, h))
    for i in range(frames):
        writer.write(loop[i % len(loop)])
    writer.release()


class RssProbe:
    """Sink that records RSS when the given frame numbers pass through the writer thread."""

    def __init__(self, at: tuple[int, ...]) -> None:
        self.at, self.samples, self.n = set(at), {}, 0

    def write(self, frame, prediction) -> None:
        self.n += 1
        if self.n in self.at:
            self.samples[self.n] = rss_mb()

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--frames", type=int, default=5200, help="length of the generated video (>= 5000)")
    p.add_argument("--model", help="any cvapps checkpoint (default: a random tiny classifier)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--keep", help="write the generated video here (and reuse it if it exists)")
    args = p.parse_args(argv)
    if args.frames < 5000:
        p.error("--frames must be at least 5000")

    import torch

    from cvapps.api import load
    from cvapps.engine.predict import PredictOptions, Predictor
    from cvapps.engine.runner import run_source
    from cvapps.io.sinks import CocoSink, JsonLinesSink, VideoWriterSink, make_drawer

    if args.model:
        predictor = load(args.model, device=args.device, batch=args.batch).predictor
    else:
        from cvapps.tasks import get_task, load_config

        torch.manual_seed(0)
        cfg = load_config(ROOT / "configs" / "classify_shapes.yaml", ["data.imgsz=32"])
        task, names = get_task("classify"), ["circle", "square", "triangle"]
        predictor = Predictor(task, task.build_model(cfg, names), names,
                              {"imgsz": 32, "resize": task.resize_mode, "in_channels": 3},
                              PredictOptions(device=args.device, batch=args.batch))
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.keep) if args.keep else Path(tmp) / "long.mp4"
        if not video.exists():
            make_long_video(video, args.frames, ROOT / "sample_data" / "shapes" / "video" / "shapes.mp4")
        probe = RssProbe((500, 5000))
        draw = make_drawer(predictor.class_names)
        sinks = [probe, VideoWriterSink(Path(tmp) / "annotated.mp4", draw),
                 JsonLinesSink(Path(tmp) / "pred.jsonl", predictor.class_names),
                 CocoSink(Path(tmp) / "coco.json", predictor.class_names)]
        report = run_source(predictor, video, sinks, progress=False)
    a, b = probe.samples.get(500), probe.samples.get(5000)
    if a is None or b is None:
        print(f"run ended after {report.processed} frames, before frame 5000", file=sys.stderr)
        return 1
    growth = b - a
    print(f"{report.processed} frames; {report.timing_report()}")
    print(f"RSS at frame 500: {a:.1f} MB, at frame 5000: {b:.1f} MB, growth {growth:+.1f} MB "
          f"(limit {LIMIT_MB:.0f} MB): {'OK' if growth <= LIMIT_MB else 'FAIL'}")
    return 0 if growth <= LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
