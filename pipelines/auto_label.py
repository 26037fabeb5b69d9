#!/usr/bin/env python
"""Run a detector over a folder and write a COCO dataset file for labelling tools.

    python pipelines/auto_label.py images/ --model det.pt --out images/../annotations/auto.json

``file_name`` is each image's path relative to the folder, categories come from the checkpoint
(its COCO ids), and every annotation keeps its ``score`` so a labelling tool can sort by doubt.
Images with no detection are listed too (so "nothing here" is a label as well).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _common import load_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("folder", help="folder of images (recursive), a glob or a .txt list")
    p.add_argument("--model", required=True, help="Faster R-CNN / YOLO checkpoint (or ultralytics model file)")
    p.add_argument("--out", default="auto_labels.json", help="COCO dataset file to write (default auto_labels.json)")
    p.add_argument("--conf", type=float, default=0.4, help="keep boxes scoring at least this (default 0.4)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--shard", default=None, metavar="I/N", help="label only items I, I+N, ... (0-based)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def auto_label(detector: Any, folder: str | Path, out: str | Path, conf: float = 0.4,
               shard: str | None = None, progress: bool = True) -> Any:
    """Detect on every image under ``folder`` with ``detector`` (a :class:`cvapps.Model`) and write
    the COCO dataset ``out``; returns the RunReport."""
    from cvapps.engine.runner import run_source
    from cvapps.formats.coco import ImageIndex
    from cvapps.io.sinks import CocoSink
    from cvapps.io.sources import SourceOptions

    root = folder if Path(folder).is_dir() else None
    sink = CocoSink(out, detector.names, detector.category_ids, index=ImageIndex(root),
                    info={"description": f"auto-labelled by cvapps (conf >= {conf})"})
    return run_source(detector.predictor, str(folder), [sink], progress=progress, options={"conf": conf},
                      source_options=SourceOptions(shard=shard))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from cvapps.errors import CvappsError

    try:
        detector = load_model(args.model, args.device, args.batch, part="detect")
        report = auto_label(detector, args.folder, args.out, args.conf, args.shard, not args.quiet)
    except CvappsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
