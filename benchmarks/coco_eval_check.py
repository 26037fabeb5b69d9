"""Cross-check ``cvapps val`` against an independent COCOeval run on ``cvapps detect``'s export.

1. ``cvapps val CKPT data.root=ROOT`` computes mAP in-process (DataLoader + task.evaluate);
2. ``cvapps detect ROOT/images/val --coco-gt ROOT/annotations/val.json --conf 0.001 --max-det 100``
   writes ``predictions.json`` through the predictor and the COCO export;
3. this script runs pycocotools' COCOeval on that file and the *original* val annotations, with no
   cvapps code in between, and prints both mAPs. Exit code 1 if they differ by more than 0.001.

Usage: python benchmarks/coco_eval_check.py runs/faster_rcnn_shapes/best.pt [--data sample_data/shapes]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path


def independent_coco_eval(ann_file: Path, results_file: Path) -> tuple[float, float, float]:
    """(AP@[.5:.95], AP@.5, AP@.75) of a COCO results file against a COCO annotation file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = json.loads(results_file.read_text())
    if not results:  # COCO.loadRes([]) raises; no detections is AP 0
        return 0.0, 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(str(results_file))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return tuple(max(0.0, float(v)) for v in ev.stats[:3])  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="sample_data/shapes", help="COCO-layout dataset root (default sample_data/shapes)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", help="folder for the detect export (default: a temporary folder)")
    ap.add_argument("--tolerance", type=float, default=0.001)
    args = ap.parse_args(argv)

    from cvapps.checkpoint import load_checkpoint
    from cvapps.cli import main as cvapps_main
    from cvapps.engine.evaluate import evaluate_checkpoint
    from cvapps.tasks import get_task

    root = Path(args.data)
    ann_file = root / "annotations" / f"{args.split}.json"
    task = get_task(load_checkpoint(args.checkpoint)["task"])
    val = evaluate_checkpoint(args.checkpoint, [f"data.root={root}"])

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        rc = cvapps_main(["detect", str(root / "images" / args.split), "--model", args.checkpoint, "--out", str(out),
                          "--conf", str(task.eval_conf), "--iou", str(task.eval_iou),
                          "--max-det", str(task.eval_max_det), "--coco-gt", str(ann_file), "--no-images", "--quiet"])
        if rc:
            return rc
        ind = independent_coco_eval(ann_file, out / "predictions.json")

    print(f"{'metric':8s} {'cvapps val':>11s} {'COCOeval(predictions.json)':>27s} {'diff':>8s}")
    worst = 0.0
    for key, value in zip(("map", "map50", "map75"), ind):
        diff = abs(val[key] - value)
        worst = max(worst, diff)
        print(f"{key:8s} {val[key]:11.4f} {value:27.4f} {diff:8.5f}")
    ok = worst <= args.tolerance
    print(f"{'OK' if ok else 'MISMATCH'}: largest difference {worst:.5f} (tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
