#!/usr/bin/env python
"""Throughput of the full predict pipeline on a video vs a model-only loop, same model and batch.

    python benchmarks/pipeline_overhead.py [--model CKPT] [--video FILE] [--batch 8] [--device auto]

Pipeline: what ``cvapps detect VIDEO --save-video`` runs (reader thread decoding the video,
letterbox + batching in the prefetch thread, forward + NMS, writer thread drawing boxes into an
annotated mp4 and a COCO JSON). Model-only: the same model on the same frames already decoded and
letterboxed into uint8 batches, timing only ``model(images)`` (H2D copy + forward). Prints both
rates and ratio = pipeline / model-only (1.0 means the pipeline adds nothing). Without --model a
randomly initialised detector from configs/yolo_shapes.yaml at ``--imgsz`` (default 640, the usual
detector input) is used (falls back to the classifier of configs/classify_shapes.yaml); weights do
not change the cost of the forward pass. Measured on 2 CPU cores: 1.20 at 640 px; 0.60 at 160 px,
where the whole forward pass (3 ms/frame) costs less than decoding + mp4 encoding. Each side runs
``--repeats`` times, alternating, and the best run counts (the machine may be shared).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_predictor(args: argparse.Namespace):
    import torch

    from cvapps.api import load
    from cvapps.engine.predict import Predictor

    if args.model:
        return load(args.model, device=args.device, batch=args.batch).predictor
    from cvapps.tasks import get_task, load_config

    torch.manual_seed(0)
    for config, names in (("yolo_shapes.yaml", ["circle", "square", "triangle"]),
                          ("classify_shapes.yaml", ["circle", "square", "triangle"])):
        path = ROOT / "configs" / config
        try:
            cfg = load_config(path, [f"data.imgsz={args.imgsz}"] if args.imgsz else [])
            task = get_task(cfg.task)
            model = task.build_model(cfg, names)
        except Exception as exc:  # noqa: BLE001 - a task not present in this checkout: try the next
            print(f"({config} unavailable: {exc}; trying the next model)", file=sys.stderr)
            continue
        prep = {"imgsz": cfg.data.imgsz, "resize": task.resize_mode, "in_channels": cfg.model.in_channels}
        return Predictor(task, model, names, prep, device=args.device, batch=args.batch)
    raise SystemExit("no model could be built")


def pipeline_fps(predictor, video: Path, options: dict) -> tuple[float, int, str]:
    from cvapps.engine.runner import run_source
    from cvapps.io.sinks import CocoSink, VideoWriterSink, make_drawer

    with tempfile.TemporaryDirectory() as tmp:
        draw = make_drawer(predictor.class_names)
        sinks = [VideoWriterSink(Path(tmp) / "out.mp4", draw), CocoSink(Path(tmp) / "coco.json",
                                                                     predictor.class_names)]
        report = run_source(predictor, video, sinks, progress=False, options=options, handle_signals=False)
    return report.processed / report.wall_s, report.processed, report.timing_report()


def model_only_fps(predictor, batches) -> float:
    import torch

    from cvapps.engine.device import images_to_device

    model, device = predictor.model, predictor.device
    n = sum(len(b) for b in batches)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=predictor.half):
        model(images_to_device(batches[0], device))  # warm-up (cuDNN autotune, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for images in batches:
            model(images_to_device(images, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", help="checkpoint (default: a random detector from configs/yolo_shapes.yaml)")
    p.add_argument("--task", choices=["detect", "other"], default="detect", help="what --model is (default detect)")
    p.add_argument("--video", default=str(ROOT / "sample_data" / "shapes" / "video" / "shapes.mp4"))
    p.add_argument("--batch", type=int, default=8)
    # 640 is the usual detector input; at the shapes config's 160 px the forward pass takes ~3 ms a
    # frame on 2 CPU cores, less than decoding + mp4 encoding, so the ratio there measures the codec.
    p.add_argument("--imgsz", type=int, default=640,
                   help="network input size for the default model (default 640; 160 = the shapes config)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from cvapps.io.sources import open_source

    predictor = build_predictor(args)
    task = getattr(predictor.task, "name", "?")
    options = {"conf": 0.25} if task in ("yolo", "faster_rcnn", "ultralytics") else {}
    with open_source(args.video) as src:
        frames = list(src)
    prepared = [predictor.task.preprocess(f.image, predictor.imgsz, predictor.in_channels, rect=predictor.rect)[0] for f in frames]
    batches = [torch.from_numpy(np.stack(prepared[i:i + args.batch])).permute(0, 3, 1, 2).contiguous()
               for i in range(0, len(prepared), args.batch)]
    pipeline_fps(predictor, Path(args.video), options)  # warm-up: first-call costs, file cache
    best_pipe, best_model, timing = 0.0, 0.0, ""
    for _ in range(args.repeats):
        fps, n, report = pipeline_fps(predictor, Path(args.video), options)
        if fps > best_pipe:
            best_pipe, timing = fps, report
        best_model = max(best_model, model_only_fps(predictor, batches))
    print(f"model: {task} ({type(predictor.model).__name__}), input {predictor.imgsz}, batch {args.batch}, "
          f"device {predictor.device}, torch threads {torch.get_num_threads()}, {len(frames)} frames")
    print(f"pipeline (decode + preprocess + model + postprocess + draw/encode mp4 + COCO): {best_pipe:.1f} frames/s")
    print(f"  {timing}")
    print(f"model-only loop on pre-decoded tensors:                 {best_model:.1f} frames/s")
    print(f"ratio pipeline / model-only: {best_pipe / best_model:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
