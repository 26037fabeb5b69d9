"""Cross-check ``cvapps val`` against an independent COCOeval run on ``cvapps detect``'s export.

0. By default the val split is first copied with every image resized to its own random, non-square
   size (128-192 px a side, boxes scaled with it): mixed sizes are where a val path that
   preprocessed differently from the predictor used to disagree (``--as-is`` skips this);
1. ``cvapps val CKPT data.root=ROOT`` computes mAP in-process (the engine's evaluation loop);
2. ``cvapps detect ROOT/images/val --coco-gt ROOT/annotations/val.json --conf 0.001 --max-det 100``
   writes ``predictions.json`` through the predictor and the COCO export;
3. this script runs pycocotools' COCOeval on that file and the val annotations, with no cvapps
   code in between, and prints both mAPs and their difference (0.0000 expected: both run the
   same predictor). Exit code 1 if they differ by more than ``--tolerance``.

Usage: python benchmarks/coco_eval_check.py runs/faster_rcnn_shapes/best.pt [--data sample_data/shapes]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
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


def mixed_size_copy(root: Path, split: str, out: Path, seed: int = 0, sizes: tuple[int, int] = (128, 192)) -> Path:
    """A COCO-layout copy of ``root``'s ``split`` whose images are each resized to a random
    non-square size in ``sizes`` (boxes scaled accordingly; segmentations dropped). Returns ``out``."""
    import random

    import cv2

    rng = random.Random(seed)
    data = json.loads((root / "annotations" / f"{split}.json").read_text())
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    scale = {}
    for im in data["images"]:
        image = cv2.imread(str(root / "images" / split / im["file_name"]))
        w = rng.randint(*sizes)
        h = rng.choice([s for s in range(sizes[0], sizes[1] + 1) if s != w])
        dest = out / "images" / split / im["file_name"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dest), cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA))
        scale[im["id"]] = (w / im["width"], h / im["height"])
        im["width"], im["height"] = w, h
    for ann in data["annotations"]:
        sx, sy = scale[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        ann["bbox"] = [x * sx, y * sy, bw * sx, bh * sy]
        ann["area"] = bw * sx * bh * sy
        ann.pop("segmentation", None)
    (out / "annotations" / f"{split}.json").write_text(json.dumps(data))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="sample_data/shapes", help="COCO-layout dataset root (default sample_data/shapes)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", help="folder for the detect export (default: a temporary folder)")
    ap.add_argument("--tolerance", type=float, default=0.0001)
    ap.add_argument("--as-is", action="store_true", help="use the val images as they are (no mixed-size copy)")
    args = ap.parse_args(argv)

    from cvapps.engine.evaluate import evaluate_checkpoint
    from cvapps.api import load

    task = load(args.checkpoint).loaded.task
    opts = task.eval_options
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.as_is else mixed_size_copy(Path(args.data), args.split, Path(tmp) / "mixed")
        ann_file = root / "annotations" / f"{args.split}.json"
        val = evaluate_checkpoint(args.checkpoint, [f"data.root={root}"])
        out = Path(args.out or Path(tmp) / "detect")
        rc = subprocess.call([sys.executable, "-m", "cvapps", "detect", str(root / "images" / args.split), "--model", args.checkpoint, "--out", str(out),
                          "--conf", str(opts["conf"]), "--iou", str(opts["iou"]),
                          "--max-det", str(opts["max_det"]), "--coco-gt", str(ann_file), "--no-images", "--quiet"])
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
    sizes = "as is" if args.as_is else "mixed non-square sizes"
    print(f"{'OK' if ok else 'MISMATCH'}: largest difference {worst:.4f} on {sizes} (tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
