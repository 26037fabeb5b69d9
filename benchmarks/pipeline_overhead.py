#!/usr/bin/env python
"""What the predict pipeline costs: the pipeline against its slowest stage and against a minimal loop.

    python benchmarks/pipeline_overhead.py [--cases video,classify,segment] [--repeats 15] [--batch 8]
                                           [--threads N] [--device cpu]

* video: ``cvapps detect sample.mp4 --save-video --save-json`` (the shapes YOLO of
  sample_data/models/detect.pt; reader thread decoding, letterbox + batching, forward + NMS, writer
  thread drawing into the mp4 and collecting the COCO JSON). Each stage is also measured ALONE in
  the same run: decode (cv2 read loop), forward+postprocess (on frames already decoded and
  letterboxed), encode (drawing + mp4 + COCO JSON from predictions already made). Prints
  ``pipeline / slowest stage`` (1.0: the pipeline costs nothing beyond its bottleneck; target >= 0.85)
  and the serial sum of the stages for reference.
* classify, segment: the predictor over a folder (sample_data/shapes/classify, .../images),
  predictions only, against :func:`_common.minimal_loop` (cv2.imread + the same preprocessing,
  model, batch, memory layout, threads and postprocessing, serial). Prints
  ``pipeline / minimal loop`` (target >= 0.95).

Every case runs ``--repeats`` times, alternating with the others; each ratio is printed as the ratio of the
best runs and as the median of the rounds' side-by-side ratios, and the
worst/best spread shows the noise (the machine may be shared). Layout: the predictor's own
``memory_format`` (the task's layout rule), which the stage and minimal loops use too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, alternate, best, folder_paths, minimal_loop, print_spreads, rate, ratio_summary

VIDEO = ROOT / "sample_data" / "shapes" / "video" / "shapes.mp4"
MODELS = ROOT / "sample_data" / "models"
FOLDERS = {"classify": ROOT / "sample_data" / "shapes" / "classify",
           "segment": ROOT / "sample_data" / "shapes" / "images"}


def _video_sinks(predictor, tmp: Path) -> list:
    from cvapps.io.sinks import CocoSink, VideoWriterSink, make_drawer

    return [VideoWriterSink(tmp / "out.mp4", make_drawer(predictor.class_names)),
            CocoSink(tmp / "predictions_coco.json", predictor.class_names, predictor.category_ids,
                     results_path=tmp / "predictions.json")]


def video_case(args: argparse.Namespace) -> None:
    import cv2

    from cvapps.api import load
    from cvapps.engine.runner import run_source
    from cvapps.io.sinks import close_all
    from cvapps.io.sources import open_source

    predictor = load(MODELS / "detect.pt", device=args.device, batch=args.batch).predictor
    options = {"conf": 0.25}
    with open_source(str(VIDEO)) as src:
        frames = list(src)
        fps_in = src.fps
    batches = [predictor._prepare(frames[i:i + args.batch]) for i in range(0, len(frames), args.batch)]
    predictions: list = []

    def decode() -> float:
        t0, cap, n = time.perf_counter(), cv2.VideoCapture(str(VIDEO)), 0
        while cap.read()[0]:
            n += 1
        cap.release()
        return rate(n, time.perf_counter() - t0)

    def letterbox() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(frames), args.batch):
            predictor._prepare(frames[i:i + args.batch])
        return rate(len(frames), time.perf_counter() - t0)

    def forward() -> float:
        t0 = time.perf_counter()
        out = [pair for group in batches for pair in predictor._infer_all(group, options)]
        seconds = time.perf_counter() - t0
        predictions[:] = out
        return rate(len(frames), seconds)

    def encode() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            sinks = _video_sinks(predictor, Path(tmp))
            sinks[0].fps = fps_in
            t0 = time.perf_counter()
            for frame, prediction in predictions:
                for sink in sinks:
                    sink.write(frame, prediction)
            close_all(sinks, commit=True)
            return rate(len(predictions), time.perf_counter() - t0)

    def pipeline() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_source(predictor, str(VIDEO), _video_sinks(predictor, Path(tmp)), progress=False,
                                options=options, handle_signals=False)
            return report.fps

    forward()  # warm-up: the layout probe, first-call allocations, the file cache
    pipeline()
    rates = alternate({"decode": decode, "letterbox": letterbox, "forward+postprocess": forward,
                       "encode (draw + mp4 + COCO)": encode, "pipeline": pipeline}, args.repeats)
    b = best(rates)
    stages = {k: v for k, v in b.items() if k not in ("pipeline", "letterbox")}
    slowest = min(stages, key=stages.get)
    serial = 1 / sum(1 / v for k, v in b.items() if k != "pipeline")
    print(f"\n== video: detect {VIDEO.name} --save-video --save-json ({len(frames)} frames "
          f"{frames[0].image.shape[1]}x{frames[0].image.shape[0]}, input {predictor.imgsz} rect, batch {args.batch}, "
          f"layout {_fmt(predictor)}, torch threads {_threads()}) ==")
    print_spreads(rates)
    print(f"  serial sum of the stages     {serial:9.1f}/s")
    print(f"ratio pipeline / slowest stage ({slowest}): {ratio_summary(rates, 'pipeline', slowest)}  (target >= 0.85)")


def folder_case(task: str, args: argparse.Namespace) -> None:
    from cvapps.api import load
    from cvapps.engine.runner import run_source

    predictor = load(MODELS / f"{task}.pt", device=args.device, batch=args.batch).predictor
    folder = FOLDERS[task]
    paths = folder_paths(folder)
    options: dict = {}

    def pipeline() -> float:
        return run_source(predictor, str(folder), [], progress=False, options=options, handle_signals=False).fps

    def minimal() -> float:
        return minimal_loop(predictor, paths, options)

    pipeline()  # warm-up (layout probe, file cache)
    minimal()
    rates = alternate({"pipeline": pipeline, "minimal loop": minimal}, args.repeats)
    print(f"\n== {task}: folder {folder.relative_to(ROOT)} ({len(paths)} images, input {predictor.imgsz}, "
          f"batch {args.batch}, layout {_fmt(predictor)}, torch threads {_threads()}) ==")
    print_spreads(rates)
    print(f"ratio pipeline / minimal loop: {ratio_summary(rates, 'pipeline', 'minimal loop')}  (target >= 0.95)")


def _fmt(predictor) -> str:
    import torch

    return "channels_last" if predictor.memory_format == torch.channels_last else "NCHW"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--cases", default="video,classify,segment")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for case in args.cases.split(","):
        if case == "video":
            video_case(args)
        elif case in FOLDERS:
            folder_case(case, args)
        else:
            p.error(f"unknown case {case!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
