"""``cvapps benchmark MODEL --data DIR``: every runtime and precision of a model, one table (see cvapps.benchmark)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="compare runtimes (torch, onnxruntime, OpenVINO fp32/INT8) on one model",
                       description="Export MODEL (a cvapps .pt) to ONNX and OpenVINO fp32/INT8 (calibrated on DIR) "
                                   "into --out, then measure each runtime in its own process: file size, the metric "
                                   "on DIR's val split, model-only and end-to-end img/s on the CPU, and the ratio to "
                                   "torch. A runtime that fails is a row with its reason. Prints a Markdown table and "
                                   "writes OUT/benchmark.json.")
    p.add_argument("model", help="a cvapps checkpoint (.pt), or an exported .onnx / OpenVINO folder (one row)")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset root: its val split is scored and timed")
    p.add_argument("--out", default="runs/benchmark", help="folder for the exports and benchmark.json")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--images", type=int, default=128,
                   help="val images timed end to end (a smaller val split is repeated; default 128)")
    p.add_argument("--seconds", type=float, default=2.0, help="model-only and end-to-end timing per runtime (default 2 s each)")
    p.add_argument("--calib", type=int, default=64, help="INT8 calibration images (default 64)")
    p.add_argument("--no-metric", action="store_true", help="skip scoring the val split (faster)")
    p.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from cvapps.benchmark import (  # heavy (torch): not for `cvapps --help`
        BenchmarkOptions,
        benchmark,
        table,
    )
    from cvapps.io.guard import protected

    options = BenchmarkOptions(data=args.data, out=args.out, batch=args.batch, images=args.images,
                               seconds=args.seconds, calib=args.calib, metric=not args.no_metric)
    with protected(args.out, folders=[args.data], others=[args.model]):
        rows = benchmark(args.model, options)
    print(table(rows))
    return 0 if any(not r.error for r in rows) else 1
