#!/usr/bin/env python
"""Tracking through occlusions: IDF1 / MOTA / HOTA and line counts of bytetrack, botsort and ocsort
side by side on generated occlusion videos (cvapps.data.synth_occlusion), the same trackers on the
non-occluding shapes video, plus the speed cost of the appearance embeddings and of tracking.

    python benchmarks/tracking_occlusion.py [--seeds 1 2 3 4 5] [--model CKPT] [--epochs 30]

Without ``--model`` the detector is trained first (about 5 minutes on 2 cores, kept in
``--detector-dir`` for the next run): ``configs/yolo_shapes.yaml`` on frames of occlusion videos of
other seeds (:func:`generate_occlusion_dataset`), because the shapes dataset never shows two shapes
overlapping and its detector (``sample_data/models/detect.pt``) reports one box for a pair.

The detector runs once per video (with backbone embeddings attached); every tracker then sees the
same detections. Scores use ground truth boxes >= --min-visibility visible (default 0.5; the rest
are don't-care) and, in brackets, all boxes. Counts: the vertical middle line against the truth.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cvapps
from cvapps.analytics import Counter, Tracker
from cvapps.analytics.embed import attach_embeddings
from cvapps.analytics.track_eval import evaluate_rows
from cvapps.data.synth import generate_video
from cvapps.data.synth_occlusion import generate_occlusion_dataset, generate_occlusion_video
from cvapps.formats.mot import MotRow, read_mot
from cvapps.io.sources import open_source

TRACKERS = ("bytetrack", "botsort", "ocsort")
logging.getLogger("ultralytics").setLevel(logging.ERROR)  # botsort's motion compensation warns on plain frames


def detect(model_path: str, video: Path, embed: bool) -> tuple[list, float]:
    predictor = cvapps.load(model_path, device="cpu").predictor
    if embed:
        attach_embeddings(predictor)
    t0 = time.perf_counter()
    pairs = list(predictor.predict(open_source(str(video)), conf=0.1))
    return pairs, len(pairs) / (time.perf_counter() - t0)


def run(kind: str, pairs: list, line: list[float]) -> tuple[list[MotRow], tuple[int, int], float]:
    """Track and count one video's detections: (MOT rows, (in, out), seconds spent in the tracker)."""
    tracker, counter = Tracker(kind), Counter([tuple(line)], class_names=["circle", "square", "triangle"])
    rows = []
    for frame, pred in pairs:
        out = tracker.update(frame, pred.detections)  # the same detections (and embeddings) for every tracker
        counts = counter.update(frame, out)
        rows += [MotRow(frame.frame_index + 1, int(i), (b[0], b[1], b[2] - b[0], b[3] - b[1]))
                 for b, i in zip(out.boxes.tolist(), out.track_ids.tolist())]
    return rows, (counts.lines[0].in_count, counts.lines[0].out_count), tracker.seconds  # its own time only


def train_detector(folder: Path, epochs: int) -> str:
    """A YOLO trained on occlusion-video frames of other seeds (kept in ``folder``; reused when there)."""
    best = folder / "best.pt"
    if best.is_file():
        print(f"detector: {best} (from an earlier run; delete it to train again)")
        return str(best)
    data = generate_occlusion_dataset(folder.with_name(folder.name + "_data"), train=900, val=150, every=10)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cvapps", "train", str(ROOT / "configs" / "yolo_shapes.yaml"),
                    f"data.root={data}", f"train.epochs={epochs}", f"out={folder}"], check=True, cwd=ROOT)
    print(f"detector: trained in {time.perf_counter() - t0:.0f} s -> {best}")
    return str(best)


def plain_video(model: str, tmp: Path) -> None:
    """The trackers on the non-occluding shapes video (seed 50) with the shipped detector."""
    folder = generate_video(tmp / "plain", frames=240, seed=50, progress=False)
    pairs, _ = detect(model, folder / "shapes.mp4", embed=True)
    gt = read_mot(folder / "gt.txt")
    for kind in TRACKERS:
        s = evaluate_rows(run(kind, pairs, [0.0, 0.0, 1.0, 1.0])[0], gt)
        print(f"non-occluding video (seed 50, shipped detector) {kind:9s} IDF1 {s.idf1:.3f}  MOTA {s.mota:.3f}  "
              f"ids {s.pred_ids} (truth {s.gt_ids})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--model", default=None, help="detector (default: train one, see the module doc)")
    p.add_argument("--detector-dir", default="runs/occlusion_detector", help="where the trained detector is kept")
    p.add_argument("--epochs", type=int, default=30, help="epochs of the detector's training")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--min-visibility", type=float, default=0.5)
    args = p.parse_args()
    args.model = args.model or train_detector(Path(args.detector_dir).resolve(), args.epochs)
    table: dict[str, list] = {k: [] for k in TRACKERS}
    fps_plain, fps_embed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        plain_video(str(ROOT / "sample_data" / "models" / "detect.pt"), Path(tmp))
        for seed in args.seeds:
            folder = generate_occlusion_video(Path(tmp) / f"s{seed}", frames=args.frames, seed=seed, progress=False)
            gt, truth = read_mot(folder / "gt.txt"), json.loads((folder / "crossings.json").read_text())
            if not fps_plain:  # warm-up (first-call imports and kernel set-up), not timed
                detect(args.model, folder / "shapes.mp4", embed=True)
            fps_plain.append(detect(args.model, folder / "shapes.mp4", embed=False)[1])
            pairs, fps = detect(args.model, folder / "shapes.mp4", embed=True)
            fps_embed.append(fps)
            for kind in TRACKERS:
                rows, counts, secs = run(kind, pairs, truth["line"])
                vis, full = evaluate_rows(rows, gt, args.min_visibility), evaluate_rows(rows, gt)
                exact = counts == (truth["in"], truth["out"])
                table[kind].append((vis.idf1, vis.mota, vis.hota or 0, full.idf1, full.mota, exact, secs / len(pairs)))
                print(f"seed {seed} {kind:9s} IDF1 {vis.idf1:.3f} ({full.idf1:.3f})  MOTA {vis.mota:.3f} "
                      f"({full.mota:.3f})  HOTA {vis.hota or 0:.3f}  ids {vis.pred_ids}  counts {counts} "
                      f"truth {(truth['in'], truth['out'])}")
    print(f"\nmean over seeds {args.seeds}, ground truth >= {args.min_visibility} visible (all boxes in brackets):")
    for kind, r in table.items():
        a = np.array(r, float)
        print(f"{kind:9s} IDF1 {a[:, 0].mean():.3f} ({a[:, 3].mean():.3f})  MOTA {a[:, 1].mean():.3f} "
              f"({a[:, 4].mean():.3f})  HOTA {a[:, 2].mean():.3f}  exact counts {int(a[:, 5].sum())}/{len(a)}  "
              f"tracking {1000 * a[:, 6].mean():.2f} ms/frame")
    plain, embed = float(np.mean(fps_plain)), float(np.mean(fps_embed))
    track_ms = 1000 * np.mean([r[6] for r in table["ocsort"]])
    with_tracking = 1 / (1 / embed + track_ms / 1000)
    print(f"detection only {plain:.1f} fps, with embeddings {embed:.1f} fps ({embed / plain:.2f}x), "
          f"with embeddings + ocsort {with_tracking:.1f} fps ({with_tracking / plain:.2f}x of detection only)")


if __name__ == "__main__":
    main()
