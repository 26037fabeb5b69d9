#!/usr/bin/env python
"""Images/s of ``--ray`` prediction with 1 and 2 predictor actors vs the single-process predictor.

    python benchmarks/ray_scaling.py [--model sample_data/models/detect.pt] [--copies 15] [--threads 1]

Input: the sample images (sample_data/shapes/images, 160 files) copied ``--copies`` times into a
temporary folder. Single process: ``run_source`` (reader, prefetch and writer threads) into a COCO
sink. Ray: :func:`cvapps.engine.ray_predict.run_ray` on one local Ray instance (started once, before
the timings; ``--cpus`` CPUs, default all) into the same sink. Each actor computes with
``--threads`` torch threads (Ray gives an actor one CPU, so OMP_NUM_THREADS=1 there) and so does the
single process, so the ratios measure Ray's overhead and scaling, not thread counts.

Printed per run: end-to-end images/s (the whole call: planning, actor start-up and model load, reading,
predicting, writing the outputs) and steady images/s (items finished after the first one, over the time
between the first and the last: actor start-up left out), and each as a ratio to the single process,
which is measured again at the end (on a shared machine the two single-process rates show the noise).

Measured on 2 CPU cores shared with other jobs (load ~8), 2400 images at 160 px, sample detector:
single process 43.5 then 71.9 images/s; 1 actor: end-to-end 50.4 images/s (0.70x of the better
single-process rate; the first result comes after ~19 s of Ray start-up, worker imports and model
load), steady 83.9 images/s (1.17x); 2 actors: end-to-end 51.1 (0.71x), steady 90.8 (1.26x). Two
actors gain little here because two cores also run the read tasks, Ray's raylet/GCS and the driver.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_folder(dst: Path, copies: int) -> int:
    images = sorted((ROOT / "sample_data" / "shapes" / "images").rglob("*.jpg"))
    for k in range(copies):
        for path in images:
            shutil.copy(path, dst / f"{k}_{path.parent.name}_{path.name}")
    return copies * len(images)


def coco_sink(predictor, out: Path):
    from cvapps.formats.coco import ImageIndex
    from cvapps.io.sinks import CocoSink

    return CocoSink(out / "predictions_coco.json", predictor.class_names, predictor.category_ids,
                    results_path=out / "predictions.json", index=ImageIndex(None, None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "sample_data" / "models" / "detect.pt"))
    parser.add_argument("--copies", type=int, default=15, help="copies of the 160 sample images (default 15)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process/actor (default 1)")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance (default all)")
    parser.add_argument("--actors", default="1,2", help="actor counts to run (default 1,2)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported; Ray's workers inherit it
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    from cvapps.api import load
    from cvapps.engine.ray_predict import RayCluster, RayModel, run_ray
    from cvapps.engine.runner import run_source

    torch.set_num_threads(args.threads)
    options = {"conf": 0.25, "iou": 0.5, "max_det": 300}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        n = make_folder(folder, args.copies)
        predictor = load(args.model, device="cpu", batch=args.batch).predictor

        def single_rate(k: int) -> float:
            t0 = time.perf_counter()
            report = run_source(predictor, str(folder), [coco_sink(predictor, Path(tmp) / f"single{k}")],
                                progress=False, options=options, handle_signals=False)
            return report.processed / (time.perf_counter() - t0)

        single = single_rate(0)
        print(f"{n} images, {os.cpu_count()} CPUs, {args.threads} torch thread(s) per process, batch {args.batch}")
        print(f"single process: {single:.1f} images/s")
        ray.init(num_cpus=args.cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        try:
            for actors in [int(a) for a in args.actors.split(",")]:
                out = Path(tmp) / f"ray{actors}"
                r = run_ray(RayModel(args.model, options, args.batch, "cpu"), str(folder), [coco_sink(predictor, out)],
                            out, RayCluster(actors=actors), progress=False)
                end_to_end = r.processed / r.wall_s
                steady = (r.predicted - 1) / max(1e-9, r.predict_s - r.first_result_s)
                print(f"ray, {actors} actor(s): end-to-end {end_to_end:.1f} images/s ({end_to_end / single:.2f}x), "
                      f"steady {steady:.1f} images/s ({steady / single:.2f}x); first result after "
                      f"{r.first_result_s:.1f} s, wall {r.wall_s:.1f} s")
        finally:
            ray.shutdown()
        again = single_rate(1)  # the machine may be shared: the ratios above use the first measurement
        print(f"single process again after the Ray runs: {again:.1f} images/s "
              f"(ratios against it: multiply the ratios above by {single / again:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
