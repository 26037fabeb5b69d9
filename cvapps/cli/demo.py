"""``cvapps demo``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="classify, segment and detect the shipped sample images and video (seconds)",
                       description="Run the small checkpoints shipped in sample_data/models/ (classifier, FCN-8s, "
                                   "YOLO) over sample_data/shapes: classify the held-out crops, segment and detect "
                                   "images/val and video/shapes.mp4. Writes predictions.csv, COCO JSON (detect + "
                                   "segment), annotated images and videos under --out, scores each task against "
                                   "the sample's ground truth, and prints where every output is.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from cvapps.demo import run_demo  # imported when run: `cvapps --help` stays fast
    from cvapps.io.guard import output_root

    with output_root(args.out):  # every output is written inside --out, through no link
        run_demo(args.out, args.device, progress=not args.quiet)
    return 0
