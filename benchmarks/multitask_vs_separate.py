"""Benchmark (not a test): one multi-task model vs the single-task YOLO and FCN models run one after the other.

1. Throughput (always): the three models are built from configs/yolo_shapes.yaml,
   configs/segment_shapes.yaml and configs/multitask_shapes.yaml with each of ``--backbones`` in turn
   (the shipped configs' tiny one, and the torchvision backbones users transfer from; the three
   models always share the backbone, imgsz and batch; trained checkpoints with
   --yolo/--segment/--multitask, else random weights, which cost the same), each in the form the Predictor runs it (BatchNorms folded, the task's memory
   layout), and run on the same letterboxed sample frames. "separate" = the YOLO model's
   forward + postprocess (NMS, boxes to original pixels), then the FCN's forward + postprocess
   (mask to original pixels); "multitask" = one forward + the same postprocesses of its outputs.
   Prints images/s of both and the ratio multitask / separate (forward only, and with postprocess):
   the median of the rounds' ratios (each round runs both side by side) and the ratio of the best runs.
2. Accuracy (``--train``): trains the single-task YOLO and FCN configs one after the other, then
   the multi-task config, each from scratch with its shipped recipe, timing each; evaluates every
   best.pt on the held-out val split with ``cvapps val``'s code and prints mAP50 / mAP50-95 /
   mIoU side by side with the differences, and the training wall times (the multi-task run must
   not take longer than the two single-task runs together). The multi-task numbers are those of
   its shared pass (one forward per image gives both the boxes and the mask that are scored).

    python benchmarks/multitask_vs_separate.py [--threads 2] [--batch 8] [--rounds 9] [--clock wall|cpu]
                                               [--backbones tiny,resnet18,mobilenet_v3_large]
    python benchmarks/multitask_vs_separate.py --train [--out runs/bench_multitask]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cvapps.engine.device import images_to_device
from cvapps.engine.evaluate import evaluate_checkpoint
from cvapps.engine.load import load_model
from cvapps.engine.predict import PredictOptions, Predictor
from cvapps.engine.train import train
from cvapps.io.images import read_image
from cvapps.tasks import get_task, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"yolo": "yolo_shapes.yaml", "segment": "segment_shapes.yaml", "multitask": "multitask_shapes.yaml"}
DETECT_OPTIONS = {"conf": 0.25, "iou": 0.5, "max_det": 300}


def build(name: str, checkpoint: str | None, overrides: list[str]) -> tuple[Any, torch.nn.Module, torch.memory_format]:
    """(task, model, layout) from a checkpoint, or from the shipped config with random weights; the model
    in the form the Predictor runs it (BatchNorms folded, the task's memory layout)."""
    if checkpoint:
        loaded = load_model(checkpoint, device="cpu")
        task, model, names = loaded.task, loaded.model, loaded.class_names
    else:
        cfg = load_config(ROOT / "configs" / CONFIGS[name], overrides)
        task = get_task(cfg.task)
        names = ["circle", "square", "triangle"]
        names = ["background", *names] if name == "segment" else names
        model = task.build_model(cfg, names)
    predictor = Predictor(task, model, names, {"imgsz": 160}, PredictOptions(device="cpu"))
    return task, predictor.model, predictor.memory_format


def frames(folders: list[Path], count: int) -> list[np.ndarray]:
    paths = [p for folder in folders for p in sorted(folder.iterdir()) if p.suffix.lower() in (".png", ".jpg")]
    return [read_image(p) for p in paths[:count]]


def timed_pair(first: Callable[[], Any], second: Callable[[], Any], rounds: int,
               clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float]]:
    """Seconds of each of ``rounds`` runs of both, interleaved so a busy spell slows both alike."""
    first(), second()  # warm-up (allocator, oneDNN kernels, YOLO anchors)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for i, fn in enumerate((first, second)):
            t0 = clock()
            fn()
            times[i].append(clock() - t0)
    return times


def throughput(args: argparse.Namespace, backbone: str) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    common = [f"data.imgsz={args.imgsz}", "train.device=cpu", f"model.backbone={backbone}"]
    yolo_task, yolo, layout = build("yolo", args.yolo, common)
    seg_task, seg, seg_layout = build("segment", args.segment, common)
    mt_task, mt, mt_layout = build("multitask", args.multitask, common)
    assert layout == seg_layout == mt_layout, "the three tasks share one CPU layout rule"
    images = frames([ROOT / "sample_data/shapes/images" / split for split in ("val", "train")], args.batch * args.batches)
    prepared = [mt_task.preprocess(im, args.imgsz, rect=True) for im in images]
    batches = []
    for i in range(0, len(prepared), args.batch):
        chunk = prepared[i:i + args.batch]
        x = images_to_device(torch.from_numpy(np.stack([a for a, _ in chunk])).permute(0, 3, 1, 2),
                             torch.device("cpu"), layout)
        batches.append((x, [m for _, m in chunk]))

    def separate(post: bool) -> None:
        with torch.inference_mode():
            for x, metas in batches:
                boxes, logits = yolo(x), seg(x)  # two backbone passes
                if post:
                    yolo_task.postprocess(boxes, metas, **DETECT_OPTIONS)
                    seg_task.postprocess(logits, metas)

    def shared(post: bool) -> None:
        with torch.inference_mode():
            for x, metas in batches:
                out = mt(x)  # one backbone pass for every head
                if post:
                    mt_task.postprocess(out, metas, **DETECT_OPTIONS)

    n = len(images)
    result = {}
    for post in (False, True):
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        seps, mts = timed_pair(lambda p=post: separate(p), lambda p=post: shared(p), args.rounds, clock)
        t_sep, t_mt = min(seps), min(mts)
        paired = [a / b for a, b in zip(seps, mts)]  # each round's two runs sat side by side
        key = "with_postprocess" if post else "forward"
        result[f"{key}/separate_img_s"] = n / t_sep
        result[f"{key}/multitask_img_s"] = n / t_mt
        result[f"{key}/ratio"] = statistics.median(paired)
        result[f"{key}/ratio_best_over_best"] = t_sep / t_mt
        print(f"{key:>16}: separate (YOLO then FCN) {n / t_sep:7.1f} img/s, multitask {n / t_mt:7.1f} img/s (best runs); "
              f"throughput ratio multitask/separate {statistics.median(paired):.2f}x median of {len(paired)} rounds "
              f"({min(paired):.2f}-{max(paired):.2f}), {t_sep / t_mt:.2f}x best/best")
    heads = [k for k in getattr(mt, "heads", {})]
    print(f"({n} frames, batch {args.batch}, imgsz {args.imgsz}, backbone {backbone}, {args.threads} CPU "
          f"threads, {args.clock} time; "
          f"multitask heads: "
          f"{', '.join(heads)})")
    return result


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    runs: dict[str, dict[str, Any]] = {}
    for name in ("yolo", "segment", "multitask"):
        overrides = [f"out={out / name}", f"train.device={args.device}", f"data.imgsz={args.imgsz}"]
        overrides += args.multitask_overrides if name == "multitask" else []
        cfg = load_config(ROOT / "configs" / CONFIGS[name], overrides)
        t0 = time.perf_counter()
        res = train(cfg, progress=False, log=lambda m: None)
        wall = time.perf_counter() - t0
        metrics = evaluate_checkpoint(res.best, [f"train.device={args.device}"])
        runs[name] = {"train_s": round(wall, 1), **{k: round(v, 4) for k, v in metrics.items()
                                                    if k in ("map", "map50", "miou", "presence_f1", "score")}}
        print(f"{name:>9}: trained in {wall:6.1f} s; {json.dumps(runs[name])}", flush=True)
    sep_s = runs["yolo"]["train_s"] + runs["segment"]["train_s"]
    mt = runs["multitask"]
    summary = {"separate_train_s": round(sep_s, 1), "multitask_train_s": mt["train_s"],
               "d_map50": round(mt["map50"] - runs["yolo"]["map50"], 4),
               "d_map": round(mt["map"] - runs["yolo"]["map"], 4),
               "d_miou": round(mt["miou"] - runs["segment"]["miou"], 4)}
    print(f"mAP50 multitask {mt['map50']:.4f} vs YOLO {runs['yolo']['map50']:.4f} (diff {summary['d_map50']:+.4f}); "
          f"mIoU multitask {mt['miou']:.4f} vs FCN {runs['segment']['miou']:.4f} (diff {summary['d_miou']:+.4f}); "
          f"training {mt['train_s']:.0f} s vs {sep_s:.0f} s for both single-task runs")
    return {"runs": runs, **summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time, steadier on a shared machine "
                        "(use with --threads 1, where it equals the compute time)")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--backbones", default="tiny,resnet18,mobilenet_v3_large",
                   help="comma list: the backbone of all three models when built from the configs, one "
                        "measurement each (default: the shipped configs' tiny, resnet18, mobilenet_v3_large)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=10, help="batches of sample frames timed (default 10)")
    p.add_argument("--rounds", type=int, default=9, help="timed rounds, alternating (default 9); the ratio is the "
                                                       "median of the rounds' ratios")
    p.add_argument("--yolo", help="a trained yolo checkpoint (default: random weights)")
    p.add_argument("--segment", help="a trained segment checkpoint")
    p.add_argument("--multitask", help="a trained multitask checkpoint")
    p.add_argument("--train", action="store_true", help="also train all three and compare held-out accuracy")
    p.add_argument("--out", default="runs/bench_multitask", help="where --train writes its runs")
    p.add_argument("--device", default="cpu", help="training device for --train (default cpu)")
    p.add_argument("--multitask-overrides", nargs="*", default=[], help="key=value overrides of the multitask config")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args()
    result: dict[str, Any] = {}
    if args.train:
        result["accuracy"] = accuracy(args)
        args.yolo = args.yolo or str(Path(args.out) / "yolo" / "best.pt")
        args.segment = args.segment or str(Path(args.out) / "segment" / "best.pt")
        args.multitask = args.multitask or str(Path(args.out) / "multitask" / "best.pt")
    given = [c for c in (args.yolo, args.segment, args.multitask) if c]
    if 0 < len(given) < 3:
        p.error("give all three of --yolo, --segment and --multitask, or none")
    # trained checkpoints carry their own backbone: one measurement
    backbones = ["from checkpoints"] if given else args.backbones.split(",")
    result["throughput"] = {}
    for backbone in backbones:
        print(f"\n== backbone {backbone} ==")
        result["throughput"][backbone] = throughput(args, backbone)
    print("\nthroughput ratio multitask / separate (median of the rounds):")
    for backbone, r in result["throughput"].items():
        print(f"  {backbone:20} forward {r['forward/ratio']:.2f}x, with postprocess {r['with_postprocess/ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
