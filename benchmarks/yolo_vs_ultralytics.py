"""Benchmark (not a test): our shared-backbone YOLO vs ultralytics YOLOv8n, and cvapps vs ultralytics predict.

1. On a generated shapes set, train our YOLO (configs/yolo_shapes.yaml) and ultralytics yolov8n
   from scratch (configs/ultralytics_shapes.yaml, ultralytics' trainer) with the same image size,
   epochs, batch and CPU threads; print both mAP@.5, training time, inference ms/img and ratios.
2. With the same yolov8n weights (the run above, or --weights), run ultralytics' ``predict`` and our
   predictor (the code behind ``cvapps detect``) over the same folder; print images/s and the
   throughput ratio ours / ultralytics (>= 1.0 means cvapps is at least as fast).

Default run is short (3 epochs, ~2-5 min on 2 CPU cores); ``--epochs 30`` for a real comparison.
    python benchmarks/yolo_vs_ultralytics.py [--epochs 3] [--imgsz 160] [--threads 2]
    python benchmarks/yolo_vs_ultralytics.py --skip-train --weights yolov8n.pt --folder DIR --predict-imgsz 640
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def train_ours(data: Path, out: Path, args) -> tuple[float, float, Path]:
    from cvapps.tasks import load_config
    from cvapps.engine.train import train

    cfg = load_config(ROOT / "configs" / "yolo_shapes.yaml",
                      [f"data.root={data}", f"data.imgsz={args.imgsz}", f"train.epochs={args.epochs}",
                       f"train.batch={args.batch}", f"train.device={args.device}", f"out={out}",
                       f"train.val_every={args.epochs}"])
    t0 = time.perf_counter()
    result = train(cfg, progress=False, log=lambda m: None)
    return result.best_metric, time.perf_counter() - t0, result.best


def train_ultralytics(data: Path, out: Path, args) -> tuple[float, float, Path]:
    from cvapps.tasks import load_config
    from cvapps.engine.train import train

    cfg = load_config(ROOT / "configs" / "ultralytics_shapes.yaml",
                      [f"data.root={data}", f"data.imgsz={args.imgsz}", f"train.epochs={args.epochs}",
                       f"train.batch={args.batch}", f"train.device={args.device}", f"out={out}",
                       "model.trainer_args.verbose=false"])
    t0 = time.perf_counter()
    result = train(cfg, progress=False, log=lambda m: None)
    best = max((row.get("val/map50", 0.0) for row in result.history), default=0.0)
    return best, time.perf_counter() - t0, result.best


def time_cvapps(predictor, folder: Path, repeat: int) -> float:
    """Seconds per image of our predictor over ``folder`` (decode + letterbox + model + NMS + mapping)."""
    from cvapps.engine.runner import run_source

    run_source(predictor, str(folder), [], progress=False)  # warm-up (allocations, anchor grids)
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeat):
        n += run_source(predictor, str(folder), [], progress=False).processed
    return (time.perf_counter() - t0) / max(1, n)


def time_ultralytics(weights: Path, folder: Path, imgsz: int, device: str, repeat: int) -> float:
    """Seconds per image of ``YOLO(weights).predict`` (what ``yolo predict`` runs), no saving."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    kw = dict(source=str(folder), imgsz=imgsz, device=device, verbose=False, stream=True, save=False)
    for _ in model.predict(**kw):  # warm-up
        pass
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeat):
        n += sum(1 for _ in model.predict(**kw))
    return (time.perf_counter() - t0) / max(1, n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-train", type=int, default=120)
    p.add_argument("--n-val", type=int, default=40)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--predict-batch", type=int, default=8, help="cvapps predictor batch size")
    p.add_argument("--repeat", type=int, default=2, help="passes over the folder when timing predict")
    p.add_argument("--skip-train", action="store_true", help="only the predict throughput (needs --weights)")
    p.add_argument("--weights", type=Path, help="ultralytics .pt for the throughput comparison")
    p.add_argument("--folder", type=Path, help="image folder for the throughput comparison (default: the val images)")
    p.add_argument("--predict-imgsz", type=int, help="image size for the throughput comparison (default --imgsz)")
    p.add_argument("--work", type=Path, help="keep data and runs here (default: a temporary folder)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.skip_train and not args.weights:
        p.error("--skip-train needs --weights")

    from cvapps.data.synth import generate_shapes
    from cvapps.engine.load import load_model

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        data = work / "shapes"
        if not (data / "annotations" / "train.json").exists():
            generate_shapes(data, n_train=args.n_train, n_val=args.n_val, imgsz=args.imgsz,
                            n_crops_per_class=(1, 1), video_frames=1, progress=False)
        folder = args.folder or data / "images" / "val"
        psize = args.predict_imgsz or args.imgsz
        print(f"torch threads {torch.get_num_threads()}, device {args.device}, imgsz {args.imgsz}, "
              f"{args.n_train} train / {args.n_val} val images")

        weights = args.weights
        if not args.skip_train:
            m_ours, t_ours, ckpt = train_ours(data, work / "ours", args)
            m_ul, t_ul, weights_trained = train_ultralytics(data, work / "ultralytics", args)
            weights = weights or weights_trained
            ours_ms = 1000 * time_cvapps(load_model(ckpt, device=args.device, batch=args.predict_batch).predictor(),
                                         folder, args.repeat)
            ul_ms = 1000 * time_ultralytics(weights_trained, folder, psize, args.device, args.repeat)
            print(f"\n== training from scratch, {args.epochs} epochs ==")
            print(f"{'':24}{'mAP@.5':>10}{'train s':>10}{'infer ms/img':>14}")
            print(f"{'cvapps YOLO (tiny)':24}{m_ours:>10.3f}{t_ours:>10.1f}{ours_ms:>14.2f}")
            print(f"{'ultralytics yolov8n':24}{m_ul:>10.3f}{t_ul:>10.1f}{ul_ms:>14.2f}")
            print(f"ratios ours/ultralytics: mAP@.5 {m_ours / max(m_ul, 1e-9):.2f}, train time {t_ours / t_ul:.2f}, "
                  f"inference speed {ul_ms / ours_ms:.2f}x")

        print(f"\n== same yolov8n weights ({weights}) on {folder}, imgsz {psize} ==")
        ours = load_model(weights, device=args.device, batch=args.predict_batch, imgsz=psize).predictor()
        s_ours = time_cvapps(ours, folder, args.repeat)
        s_ul = time_ultralytics(weights, folder, psize, args.device, args.repeat)
        print(f"cvapps detect path : {1 / s_ours:8.1f} img/s ({1000 * s_ours:.2f} ms/img, batch {args.predict_batch})")
        print(f"ultralytics predict: {1 / s_ul:8.1f} img/s ({1000 * s_ul:.2f} ms/img)")
        print(f"throughput ratio ours / ultralytics: {s_ul / s_ours:.2f}")


if __name__ == "__main__":
    main()
