"""``cvapps demo``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and run a classifier on the shipped sample data (about a minute)",
                       description="Train the shapes classifier on sample_data/shapes, classify the held-out "
                                   "images with it and print the predictions and their accuracy.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from cvapps.demo import run_demo

    run_demo(args.out, args.device, progress=not args.quiet)
    return 0
