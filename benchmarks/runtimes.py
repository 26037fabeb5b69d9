#!/usr/bin/env python
"""Issue 26's acceptance figures: OpenVINO fp32 / INT8 against the torch path, and against the CPU's peak.

    python benchmarks/runtimes.py [--models detect,classify,segment] [--seconds 1] [--out runs/bench_runtimes]
                                  [--no-yolov8n]

* For each shipped model (sample_data/models/<name>.pt on sample_data/shapes): ``cvapps benchmark``
  (:mod:`cvapps.benchmark`: each runtime in its own process) and the ratios the issue asks for:
  end-to-end OpenVINO fp32 >= 2.0x torch, INT8 >= 2.5x torch with its metric within 0.01 of fp32.
* yolov8n (random weights from ultralytics' yaml) at 640 px batch 1, model only: the cvapps torch path
  and OpenVINO fp32 of the same graph, each in its own process; GFLOP/s from the model's counted
  convolution FLOPs, as % of the CPU's peak measured with a 2048x2048 fp32 matmul in a bare torch
  process (best of two runs, before and after; target >= 55%).

Every figure is one run's; the machine may be shared, so compare ratios within a run only. Prints
PASS/FAIL per criterion (a report, not a test: timings are never asserted in tests).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401 - puts the checkout on sys.path
import numpy as np
import torch
from torch import nn

from cvapps.benchmark import BenchmarkOptions, Row, benchmark, table, worker_env
from cvapps.engine.load import load_model
from cvapps.engine.onnx_graph import EvalForward, prepare_yolo_head

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "sample_data" / "shapes"


# fp32 GFLOP/s of a 2048x2048 matmul, best of 3 s of rounds, in a process without cvapps' thread policy
# (OMP_WAIT_POLICY=PASSIVE: OpenMP workers sleep between regions, cvapps/threads.py), which halves it.
PEAK = """
import json, time, torch
n = 2048
a, b = torch.rand(n, n), torch.rand(n, n)
torch.mm(a, b)
best, end = 0.0, time.perf_counter() + 3.0
while time.perf_counter() < end:
    t0 = time.perf_counter()
    torch.mm(a, b)
    best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
print(json.dumps({"gflops": best}))
"""


def conv_flops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs (2 x multiply-adds) of the Conv2d and Linear layers of one forward of ``x``."""
    total = [0.0]

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total[0] += 2.0 * output.numel() * k
        elif isinstance(module, nn.Linear):
            total[0] += 2.0 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0]


def yolov8n_worker(engine: str, seconds: float) -> dict[str, float]:
    """Model-only img/s of yolov8n (random weights) at 640 batch 1 in ``engine`` (torch / openvino)."""
    loaded = load_model("yolov8n.yaml", device="cpu", batch=1, imgsz=640)
    x = torch.rand(1, 3, 640, 640)
    flops = conv_flops(loaded.model.eval(), x)
    if engine == "torch":
        predictor = loaded.predictor(device="cpu", batch=1)  # the cvapps inference form (packed convs)
        xin = x.contiguous(memory_format=predictor.memory_format)
        run = lambda: predictor.model(xin)
    else:
        import openvino as ov  # optional heavy dependency (cvapps[openvino])

        model = loaded.model.eval()
        prepare_yolo_head(model)
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(EvalForward(model), (x,), buffer, dynamo=False, opset_version=17,
                              input_names=["images"])
        compiled = ov.Core().compile_model(ov.convert_model(io.BytesIO(buffer.getvalue())), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        request, xn = compiled.create_infer_request(), x.numpy()
        run = lambda: request.infer({0: xn})
    with torch.inference_mode():
        for _ in range(2):
            run()
        times, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    ips = 1.0 / float(np.median(times))
    return {"ips": ips, "gflops_per_image": flops / 1e9, "gflops": ips * flops / 1e9, "threads": torch.get_num_threads()}


def in_process(args: list[str]) -> dict[str, float]:
    peak = args == ["--worker", "peak"]
    command = [sys.executable, "-c", PEAK] if peak else [sys.executable, __file__, *args]
    # OMP_NUM_THREADS as the user started us (ultralytics sets 1); no OMP_WAIT_POLICY=PASSIVE (cvapps' own
    # thread policy, cvapps/threads.py) for the bare matmul
    env = {k: v for k, v in worker_env().items() if not (peak and k == "OMP_WAIT_POLICY")}
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = proc.stderr.strip().splitlines()
        return {"error": tail[-1] if tail else f"exit {proc.returncode}"}  # type: ignore[dict-item]
    return json.loads(lines[-1])


def load_average() -> str:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "?"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def shipped(name: str, args: argparse.Namespace) -> None:
    options = BenchmarkOptions(data=str(DATA / "classify") if name == "classify" else str(DATA),
                               out=str(Path(args.out) / name), seconds=args.seconds, calib=args.calib)
    rows = benchmark(ROOT / "sample_data" / "models" / f"{name}.pt", options)
    print(f"\n### {name}.pt (sample_data/models), batch {options.batch}\n\n{table(rows)}\n")
    by = {(r.runtime, r.precision): r for r in rows}
    torch_row, fp32, int8 = by.get(("torch", "fp32")), by.get(("openvino", "fp32")), by.get(("openvino", "int8"))

    def e2e(row: Row | None) -> float | None:
        return row.e2e_ips / torch_row.e2e_ips if row and row.e2e_ips and torch_row and torch_row.e2e_ips else None

    for label, row, target in (("OpenVINO fp32", fp32, 2.0), ("OpenVINO INT8", int8, 2.5)):
        ratio = e2e(row)
        print(f"- {label} end to end / torch: {'-' if ratio is None else f'{ratio:.2f}x'} (target >= {target}x): "
              f"{verdict(ratio is not None and ratio >= target)}")
    if fp32 and int8 and fp32.metric is not None and int8.metric is not None:
        drop = fp32.metric - int8.metric
        print(f"- INT8 metric {int8.metric:.4f} vs fp32 {fp32.metric:.4f}: drop {drop:+.4f} (target <= 0.01): "
              f"{verdict(drop <= 0.01)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="detect,classify,segment")
    parser.add_argument("--seconds", type=float, default=1.0, help="model-only timing per runtime")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--out", default="runs/bench_runtimes")
    parser.add_argument("--no-yolov8n", action="store_true")
    parser.add_argument("--worker", choices=["torch", "openvino"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(yolov8n_worker(args.worker, args.seconds)))
        return 0
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average at start: "
          f"{load_average()}")
    for name in [m for m in args.models.split(",") if m]:
        shipped(name, args)
    if not args.no_yolov8n:
        before = in_process(["--worker", "peak"])
        rows = {engine: in_process(["--worker", engine, "--seconds", str(max(args.seconds, 2.0))])
                for engine in ("torch", "openvino")}
        # the best of two peak runs around the models: a busy spell must not pass for a low peak
        peak = {"gflops": max(before.get("gflops", 0.0), in_process(["--worker", "peak"]).get("gflops", 0.0))}
        print(f"\n### yolov8n (random weights) 640 px batch 1, model only; matmul peak {peak.get('gflops', 0):.0f} "
              "GFLOP/s\n\n| engine | img/s | GFLOP/s | % of peak |\n| --- | ---: | ---: | ---: |")
        for engine, r in rows.items():
            if "error" in r:
                print(f"| {engine} | failed: {r['error']} | | |")
                continue
            share = 100 * r["gflops"] / peak["gflops"] if peak.get("gflops") else float("nan")
            print(f"| {engine} | {r['ips']:.1f} | {r['gflops']:.0f} | {share:.0f}% |")
        if "ips" in rows["openvino"] and peak.get("gflops"):
            share = rows["openvino"]["gflops"] / peak["gflops"]
            print(f"\n- OpenVINO fp32 model-only at 640: {100 * share:.0f}% of peak (target >= 55%): "
                  f"{verdict(share >= .55)}")
        if "ips" in rows["openvino"] and "ips" in rows["torch"]:
            ratio = rows["openvino"]["ips"] / rows["torch"]["ips"]
            print(f"- OpenVINO fp32 / cvapps torch, model only at 640: {ratio:.2f}x")
    print(f"\n(total {time.perf_counter() - t0:.0f} s; load average at end: "
          f"{load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
