"""Benchmark (not a test): our shared-backbone YOLO vs ultralytics YOLOv8n, and cvapps vs ultralytics predict.

1. On a generated shapes set, train our YOLO (configs/yolo_shapes.yaml) and ultralytics yolov8n from
   scratch (configs/ultralytics_shapes.yaml, ultralytics' own trainer), then score BOTH sides'
   best checkpoints with the same evaluator: each model predicts the val images with its own code
   (cvapps' predictor for ours, ``YOLO.predict`` for yolov8n) at conf 0.001, NMS IoU 0.7, 300
   detections per image (ultralytics' val settings), and pycocotools' COCOeval scores both result
   lists against the same val.json. Prints mAP50, mAP50-95, training time and inference speed.
2. With the same yolov8n weights (the run above, or --weights), run ultralytics' ``predict`` and our
   predictor (the code behind ``cvapps detect``) over the same folder with EQUAL settings (torch
   threads, batch, memory layout; start-up excluded; predict_vs_ultralytics.py, which also reports
   each tool's defaults as a whole process); print images/s and the ratio ours / ultralytics.

The two recipes (same data, image size, epochs, batch, CPU threads, optimizer family):

* ours: configs/yolo_shapes.yaml -- AdamW lr 0.004, cosine, 40 warm-up steps, weight decay 5e-4,
  albumentations flip/affine/colour jitter, one optimizer step per batch.
* yolov8n: configs/ultralytics_shapes.yaml -- AdamW lr0 0.004, cos_lr, warmup_epochs 1, weight decay
  5e-4, ultralytics' own augmentation (mosaic 1.0, closed for the last 2 epochs, HSV, flips,
  translate/scale), and ``nbs`` = batch. ultralytics' default ``nbs=64`` accumulates gradients to 64
  images, which on a 120-image set leaves 2 optimizer steps an epoch (to our 8); that default suits
  COCO-sized data, not this set, so the peer gets one step per batch like ours. ultralytics also
  pins CPU training to ``cpu_count - 1`` threads (1 here); the peer gets ``--threads`` like ours.

Default run is short (3 epochs, ~2-5 min on 2 CPU cores); ``--epochs 30`` for a real comparison.
``--config configs/yolo_real.yaml --scenes`` compares the real-imagery config (csp_n backbone, yolov8n's
neck widths) instead, on generated aerial-like scenes the size of one tile (``--imgsz``) with 15-40 px
objects, many per image: the data both sides then see is what ``data.tile`` feeds the model.
    python benchmarks/yolo_vs_ultralytics.py [--epochs 3] [--imgsz 160] [--threads 2]
    python benchmarks/yolo_vs_ultralytics.py --config configs/yolo_real.yaml --scenes --imgsz 320 --epochs 30
    python benchmarks/yolo_vs_ultralytics.py --skip-train --weights yolov8n.pt --folder DIR --predict-imgsz 640
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from predict_vs_ultralytics import equal_settings  # first: it imports cvapps before torch (threads.py)

import torch

ROOT = Path(__file__).resolve().parents[1]
EVAL = {"conf": 0.001, "iou": 0.7, "max_det": 300}  # ultralytics' validator settings, for both sides


def train_ours(data: Path, out: Path, args) -> tuple[float, Path]:
    from cvapps.tasks import load_config
    from cvapps.engine.train import train

    cfg = load_config(ROOT / args.config,
                      [f"data.root={data}", "data.tile=null", "data.workers=0", f"data.imgsz={args.imgsz}", f"train.epochs={args.epochs}",
                       f"train.batch={args.batch}", f"train.device={args.device}", f"out={out}",
                       f"train.val_every={max(1, args.epochs // 6)}"])
    t0 = time.perf_counter()
    result = train(cfg, progress=False, log=lambda m: None)
    return time.perf_counter() - t0, result.best


def train_ultralytics(data: Path, out: Path, args) -> tuple[float, Path]:
    import ultralytics.utils.torch_utils as ul_torch

    from cvapps.tasks import load_config
    from cvapps.engine.train import train

    # ultralytics' select_device() sets torch to NUM_THREADS (cpu_count - 1) threads for CPU
    # training; give the peer the same thread count as our side instead.
    ul_torch.NUM_THREADS = torch.get_num_threads()
    cfg = load_config(ROOT / "configs" / "ultralytics_shapes.yaml",
                      [f"data.root={data}", f"data.imgsz={args.imgsz}", f"train.epochs={args.epochs}",
                       f"train.batch={args.batch}", f"train.device={args.device}", f"out={out}",
                       f"model.trainer_args.nbs={args.batch}", "model.trainer_args.verbose=false"])
    t0 = time.perf_counter()
    result = train(cfg, progress=False, log=lambda m: None)
    return time.perf_counter() - t0, result.best


class _Collect:
    """A sink that keeps (file name, Detections) pairs."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []

    def write(self, frame, prediction) -> None:
        self.items.append((Path(frame.source).name, prediction.detections))

    def close(self) -> None:
        pass


def predict_ours(ckpt: Path, folder: Path, device: str) -> list[tuple[str, Any, Any, Any]]:
    """(file name, boxes xyxy px, scores, class indices) per image from our predictor."""
    from cvapps.api import load
    from cvapps.engine.runner import run_source

    sink = _Collect()
    run_source(load(ckpt, device=device).predictor, str(folder), [sink], progress=False,
               options=dict(EVAL))
    return [(name, d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()) for name, d in sink.items]


def predict_ultralytics(weights: Path, folder: Path, imgsz: int, device: str) -> list[tuple[str, Any, Any, Any]]:
    """The same from ``YOLO.predict`` (ultralytics' own preprocessing, model and NMS)."""
    from ultralytics import YOLO

    out = []
    for r in YOLO(str(weights)).predict(source=str(folder), imgsz=imgsz, device=device, verbose=False,
                                        stream=True, save=False, **EVAL):
        b = r.boxes
        out.append((Path(r.path).name, b.xyxy.tolist(), b.conf.tolist(), b.cls.long().tolist()))
    return out


def coco_map(gt_path: Path, predictions: list[tuple[str, Any, Any, Any]], names: list[str]) -> tuple[float, float]:
    """(mAP50, mAP50-95) of ``predictions`` against ``gt_path`` by pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
    ids = {im["file_name"].split("/")[-1]: im["id"] for im in gt.dataset["images"]}
    cat = {c["name"]: c["id"] for c in gt.dataset["categories"]}
    results = [{"image_id": ids[name], "category_id": cat[names[c]], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
               for name, boxes, scores, classes in predictions
               for (x1, y1, x2, y2), s, c in zip(boxes, scores, classes)]
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


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
    p.add_argument("--config", default="configs/yolo_shapes.yaml", help="our side's config")
    p.add_argument("--scenes", action="store_true",
                   help="train on generated scenes (many 15-40 px objects per --imgsz image) instead of shapes")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-train", type=int, default=120)
    p.add_argument("--n-val", type=int, default=40)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for both sides (default: torch's choice)")
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

    from cvapps.data.scenes import SceneSpec, generate_scenes
    from cvapps.data.synth import SynthSpec, generate_shapes
    from cvapps.api import load

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        data = work / "shapes"
        if args.scenes and not (data / "annotations" / "train.json").exists():
            generate_scenes(data, SceneSpec(n_train=args.n_train, n_val=args.n_val, width=args.imgsz,
                                            height=args.imgsz, objects=(4, 12), sizes=(15, 40)))
        elif not (data / "annotations" / "train.json").exists():
            generate_shapes(data, SynthSpec(n_train=args.n_train, n_val=args.n_val, imgsz=args.imgsz,
                                            n_crops_per_class=(1, 1), video_frames=1), progress=False)
        folder = args.folder or data / "images" / "val"
        psize = args.predict_imgsz or args.imgsz
        print(f"torch threads {torch.get_num_threads()} (both sides), device {args.device}, imgsz {args.imgsz}, "
              f"batch {args.batch}, {args.n_train} train / {args.n_val} val images, {args.epochs} epochs")

        weights = args.weights
        if not args.skip_train:
            t_ours, ckpt = train_ours(data, work / "ours", args)
            threads = torch.get_num_threads()
            t_ul, weights_trained = train_ultralytics(data, work / "ultralytics", args)
            torch.set_num_threads(threads)
            weights = weights or weights_trained
            names = json.loads((data / "annotations" / "val.json").read_text())["categories"]
            names = [c["name"] for c in names]
            gt = data / "annotations" / "val.json"
            val_images = data / "images" / "val"
            m50_ours, m_ours = coco_map(gt, predict_ours(ckpt, val_images, args.device), names)
            m50_ul, m_ul = coco_map(gt, predict_ultralytics(weights_trained, val_images, args.imgsz, args.device), names)
            ours_ms = 1000 * time_cvapps(load(ckpt, device=args.device, batch=args.predict_batch).predictor,
                                         folder, args.repeat)
            ul_ms = 1000 * time_ultralytics(weights_trained, folder, psize, args.device, args.repeat)
            print(f"\n== training from scratch, {args.epochs} epochs; both scored by pycocotools at conf "
                  f"{EVAL['conf']}, NMS IoU {EVAL['iou']} ==")
            print(f"{'':24}{'mAP50':>9}{'mAP50-95':>10}{'train s':>10}{'infer ms/img':>14}")
            print(f"{'cvapps ' + Path(args.config).stem:24}{m50_ours:>9.3f}{m_ours:>10.3f}{t_ours:>10.1f}{ours_ms:>14.2f}")
            print(f"{'ultralytics yolov8n':24}{m50_ul:>9.3f}{m_ul:>10.3f}{t_ul:>10.1f}{ul_ms:>14.2f}")
            print(f"ratios ours/ultralytics: mAP50 {m50_ours / max(m50_ul, 1e-9):.2f}, mAP50-95 "
                  f"{m_ours / max(m_ul, 1e-9):.2f}, train time {t_ours / t_ul:.2f}, inference speed {ul_ms / ours_ms:.2f}x")

        print(f"\n== same yolov8n weights ({weights}) on {folder}, imgsz {psize} ==")
        # equal threads, batch and memory layout on both sides (see predict_vs_ultralytics.py)
        equal_settings(weights, folder, psize, argparse.Namespace(
            threads=args.threads or torch.get_num_threads(), batch=args.predict_batch, repeats=max(2, args.repeat)))

if __name__ == "__main__":
    main()
