"""``cvapps classify`` (and the segment/detect commands their task modules add)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="image, folder (recursive), glob, .txt list, video file, webcam index or stream URL")
    p.add_argument("--model", required=True, help="checkpoint (.pt) to run")
    p.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--vid-stride", type=int, default=1, help="use every N-th video frame")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images with a classification checkpoint",
                       description="Classify every image of SOURCE; writes OUT/predictions.csv "
                                   "(path,label,score and the top-k) and prints a per-class count.")
    add_common(p)
    p.add_argument("--topk", type=int, default=3, help="how many best classes to list per image (default 3)")
    p.set_defaults(func=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> int:
    from cvapps.engine.predict import Predictor
    from cvapps.engine.runner import run_source
    from cvapps.io.sinks import ClassificationCSV

    predictor = Predictor.from_checkpoint(args.model, "classify", device=args.device, batch=args.batch)
    csv_sink = ClassificationCSV(Path(args.out) / "predictions.csv", predictor.class_names, args.topk)
    report = run_source(predictor, args.source, [csv_sink], progress=not args.quiet,
                        options={"topk": args.topk}, vid_stride=args.vid_stride)
    print(f"{report.summary()}; predicted: {csv_sink.summary() or 'nothing'}")
    print(f"wrote {csv_sink.path}")
    return 0
