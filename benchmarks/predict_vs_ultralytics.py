#!/usr/bin/env python
"""cvapps detect vs ultralytics predict on the same yolov8n weights: equal settings, and defaults.

    python benchmarks/predict_vs_ultralytics.py [--weights yolov8n.pt] [--threads 2] [--batch 8] [--repeats 15]

Two image sets: the 160 px shapes (sample_data/shapes/images/train, run at imgsz 160) and the 640 px
photos ultralytics ships in its package (``ultralytics/assets``, copied 32 times, run at imgsz 640).
Without ``--weights`` a randomly initialised ``yolov8n.yaml`` model is saved to a .pt (the same
file format as the released weights; yolov8n.pt cannot be downloaded here): weights do not change
the cost of the forward pass, and both sides get the same file.

(a) equal settings (the engine): the same torch threads, batch size and memory layout on both sides
    (ultralytics' ``channels_last`` set to the layout cvapps' probe chose; its CPU thread reset
    pinned to ``--threads``), start-up excluded (one warm-up pass each), no outputs written, the two
    alternating ``--repeats`` times; prints images/s and ``ratio cvapps / ultralytics``.
(b) defaults (what a user sees): the whole process, ``python -m cvapps detect SOURCE --model W``
    vs ``yolo predict model=W source=SOURCE``, each with its own defaults (threads, batch, layout,
    input size 640, annotated images written), start-up included; prints seconds and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, alternate, best, print_spreads, rate, ratio_summary


def make_weights(path: Path) -> Path:
    from ultralytics import YOLO

    YOLO("yolov8n.yaml").save(str(path))
    return path


def image_sets(tmp: Path) -> dict[str, tuple[Path, int]]:
    import ultralytics

    photos = tmp / "photos"
    photos.mkdir()
    assets = Path(ultralytics.__file__).parent / "assets"
    for i in range(32):
        for src in sorted(assets.glob("*.jpg")):
            shutil.copy(src, photos / f"{src.stem}_{i:02d}.jpg")
    return {"shapes 160 px": (ROOT / "sample_data" / "shapes" / "images" / "train", 160), "ultralytics photos 640 px": (photos, 640)}


def equal_settings(weights: Path, folder: Path, imgsz: int, args: argparse.Namespace) -> None:
    import torch
    import ultralytics.utils.torch_utils as ul_torch
    from ultralytics import YOLO

    from cvapps.api import load
    from cvapps.engine.runner import run_source

    torch.set_num_threads(args.threads)
    ul_torch.NUM_THREADS = args.threads  # ultralytics' select_device resets CPU threads to cpu_count - 1
    predictor = load(weights, device="cpu", batch=args.batch, imgsz=imgsz).predictor
    options = {"conf": 0.25, "iou": 0.7, "max_det": 300}  # ultralytics' predict defaults
    n_files = sum(1 for _ in folder.rglob("*.jpg")) + sum(1 for _ in folder.rglob("*.png"))

    def ours() -> float:
        return run_source(predictor, str(folder), [], progress=False, options=options, handle_signals=False).fps

    ours()  # warm-up; decides the layout
    channels_last = predictor.memory_format == torch.channels_last
    model = YOLO(str(weights))
    kw = dict(source=str(folder), imgsz=imgsz, device="cpu", batch=args.batch, verbose=False, stream=True,
              save=False, channels_last=channels_last, **options)

    def theirs() -> float:
        t0 = time.perf_counter()
        n = sum(1 for _ in model.predict(**kw))
        return rate(n, time.perf_counter() - t0)

    theirs()  # warm-up (builds its predictor)
    rates = alternate({"cvapps": ours, "ultralytics": theirs}, args.repeats)
    print(f"  (a) equal settings: {n_files} images, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"layout {'channels_last' if channels_last else 'NCHW'}")
    print_spreads(rates, indent="      ", width=12)
    print(f"      ratio cvapps / ultralytics (equal settings): {ratio_summary(rates, 'cvapps', 'ultralytics')}"
          f"  (target >= 1.0)")


def defaults(weights: Path, folder: Path, tmp: Path, repeats: int) -> None:
    yolo = shutil.which("yolo", path=str(Path(sys.executable).parent)) or "yolo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):  # each tool's own defaults
        env.pop(var, None)

    def process(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tmp)
        return 1.0 / (time.perf_counter() - t0)  # runs per second: higher is better, like the rest

    cvapps_cmd = [sys.executable, "-m", "cvapps", "detect", str(folder), "--model", str(weights), "--quiet",
                  "--out", str(tmp / "out_cvapps")]
    # no imgsz on either side: each runs at its default (the size the weights were trained at, 640)
    ul_cmd = [yolo, "predict", f"model={weights}", f"source={folder}", "device=cpu",
              f"project={tmp / 'out_ul'}", "exist_ok=True", "verbose=False"]
    rates = alternate({"cvapps detect": lambda: process(cvapps_cmd), "yolo predict": lambda: process(ul_cmd)},
                      max(1, min(3, repeats // 2)))  # whole processes: few rounds suffice
    b = best(rates)
    print("  (b) defaults, whole process (start-up, each tool's threads/batch/layout, annotated images written)")
    for name, values in rates.items():
        print(f"      {name:14} {1 / b[name]:7.2f} s  (slowest run {1 / min(values):.2f} s)")
    print(f"      ratio cvapps / ultralytics (defaults, whole process): {b['cvapps detect'] / b['yolo predict']:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--weights", type=Path, help="ultralytics .pt (default: a random yolov8n.yaml model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--sets", default="shapes,photos", help="which image sets: shapes, photos")
    p.add_argument("--no-defaults", action="store_true", help="skip (b), the whole-process runs")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights = args.weights or make_weights(tmp / "yolov8n.pt")
        for name, (folder, imgsz) in image_sets(tmp).items():
            if not any(key in name for key in args.sets.split(",")):
                continue
            print(f"\n== {name}: {folder} (imgsz {imgsz}), weights {weights.name} ==")
            equal_settings(weights, folder, imgsz, args)
            if not args.no_defaults:
                defaults(weights, folder, tmp, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
