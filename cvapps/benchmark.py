"""``cvapps benchmark MODEL --data DIR``: one row per runtime and precision (like ``yolo benchmark``).

For a cvapps ``.pt`` the rows are PyTorch fp32, onnxruntime fp32 (``.onnx``), OpenVINO fp32 and
OpenVINO INT8 (calibrated on DIR); for an exported model, its own runtime. The exports are written
to ``--out`` (default ``runs/benchmark``). Each row is measured in a fresh subprocess (so thread pools
of different engines never fight and one engine's warm caches do not help the next):

* size: the model file(s) on disk (MB);
* metric: the task's primary metric on DIR's val split (``cvapps val``);
* model img/s: the forward pass alone on a random ``(batch, C, S, S)`` input, median of rounds;
* end-to-end img/s: the predictor over ``--images`` of DIR's val images (decode, letterbox, forward,
  postprocess; a small split is repeated), median of passes over ``--seconds`` (at least three);
* x torch: ratios of both rates to the PyTorch row.

A runtime that fails (not installed, does not convert, crashes) is a row with its one-line reason.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cvapps.checkpoint import atomic_write_text
from cvapps.engine.device import images_to_device
from cvapps.engine.evaluate import evaluate_checkpoint
from cvapps.engine.load import LoadOptions, load_on_runtime
from cvapps.errors import CvappsError
from cvapps.export import export_onnx
from cvapps.export_openvino import OpenVinoExportOptions, export_openvino
from cvapps.io.images import IMAGE_EXTENSIONS
from cvapps.io.sources import open_source


@dataclass(frozen=True)
class BenchmarkOptions:
    """data: dataset root (val split scored, val images timed); out: exports and benchmark.json;
    batch: frames per forward; images: end-to-end images a pass; seconds: model-only and end-to-end time per row;
    calib: INT8 calibration images; metric: score the val split (off: faster)."""

    data: str
    out: str = "runs/benchmark"
    batch: int = 8
    images: int = 128
    seconds: float = 2.0
    calib: int = 64
    metric: bool = True


@dataclass
class Row:
    runtime: str
    precision: str
    path: str = ""
    size_mb: float | None = None
    metric: float | None = None
    model_ips: float | None = None
    e2e_ips: float | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """What one worker process measures."""

    path: str
    runtime: str | None
    options: BenchmarkOptions


def val_images(data: Path, count: int) -> list[str]:
    """``count`` images of DIR's val split (``images/val``, ``val``, else DIR), sorted; a split with fewer
    is repeated (each is decoded again), so a small val set still gives a timing of ``count`` images."""
    folder = next((p for p in (data / "images" / "val", data / "val") if p.is_dir()), data)
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return [files[i % len(files)] for i in range(count)] if files else []


def measure(job: Job) -> dict[str, Any]:
    """In the worker process: load the model on its runtime, time it, score it; a dict for one row."""
    opts = job.options
    loaded = load_on_runtime(job.path, job.runtime, LoadOptions(device="cpu", batch=opts.batch))
    predictor = loaded.predictor(device="cpu", batch=opts.batch)
    size, channels = predictor.imgsz, predictor.in_channels
    x = images_to_device(torch.randint(0, 256, (opts.batch, channels, size, size), dtype=torch.uint8),
                         torch.device("cpu"), predictor.memory_format)
    with torch.inference_mode():
        for _ in range(2):  # warm-up: first calls allocate, pick kernels, fill caches
            predictor.model(x)
        rounds = []
        end = time.perf_counter() + opts.seconds
        while time.perf_counter() < end or len(rounds) < 3:
            t0 = time.perf_counter()
            predictor.model(x)
            rounds.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"model_ips": opts.batch / statistics.median(rounds), "runtime": loaded.runtime,
                           "torch_threads": torch.get_num_threads()}
    files = val_images(Path(opts.data), opts.images)
    if files:
        list(predictor.predict(open_source(files[: opts.batch])))  # warm-up of the whole pipeline
        rates, end = [], time.perf_counter() + opts.seconds  # rounds, as model-only: one pass of a fast
        while time.perf_counter() < end or len(rates) < 3:  # model over 128 images is a few ms of noise
            t0 = time.perf_counter()
            count = sum(1 for _ in predictor.predict(open_source(files)))
            rates.append(count / (time.perf_counter() - t0))
        out["e2e_ips"] = statistics.median(rates)
    if opts.metric:
        metrics = evaluate_checkpoint(job.path, [f"data.root={opts.data}"], batch=opts.batch)
        out["metric"] = metrics.get(loaded.task.primary_metric)
        out["metric_name"] = loaded.task.primary_metric
    return out


def worker_env() -> dict[str, str]:
    """The environment for a measuring process: this one's, but with ``OMP_NUM_THREADS`` as the user
    started us with. Importing ultralytics sets it to 1 when unset (its training default), which a child
    would inherit: its torch would then run on one thread while the engines it is compared with use all."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    original = _startup_env().get("OMP_NUM_THREADS")
    if original is None:
        env.pop("OMP_NUM_THREADS", None)
    else:
        env["OMP_NUM_THREADS"] = original
    return env


def _startup_env() -> dict[str, str]:
    # Linux keeps the environment the process was started with; elsewhere, assume the user set nothing
    # (ultralytics' value is the only one cvapps itself ever causes).
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def run_job(job: Job, timeout_s: float = 600.0) -> dict[str, Any]:
    """``measure(job)`` in a fresh Python process; ``{"error": reason}`` when it fails."""
    payload = json.dumps({"path": job.path, "runtime": job.runtime, "options": asdict(job.options)})
    env = worker_env()
    try:
        proc = subprocess.run([sys.executable, "-m", "cvapps.benchmark", payload], check=False, capture_output=True,
                              text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return {"error": (tail[-1] if tail else f"exit code {proc.returncode}")[:200]}


def size_mb(path: Path) -> float:
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files) / 1e6


def prepare_rows(model: Path, options: BenchmarkOptions, log: Callable[[str], None]) -> list[tuple[Row, Job | None]]:
    """The rows to measure, exporting what each needs into ``options.out`` (a failed export: its row's error)."""
    out = Path(options.out)
    if model.suffix.lower() != ".pt":  # an exported model: its own runtime only
        runtime = "openvino" if model.is_dir() else "onnxruntime"
        return [(Row(runtime, "exported", str(model)), Job(str(model), None, options))]
    plans: list[tuple[str, str, Callable[[], Path]]] = [
        ("torch", "fp32", lambda: model),
        ("onnxruntime", "fp32", lambda: export_onnx(model, out / f"{model.stem}.onnx").path),
        ("openvino", "fp32", lambda: export_openvino(model, out / f"{model.stem}_openvino").folder),
        ("openvino", "int8", lambda: export_openvino(model, out / f"{model.stem}_int8_openvino", OpenVinoExportOptions(
            int8=True, data=options.data, calib=options.calib, metrics=False)).folder),
    ]
    rows: list[tuple[Row, Job | None]] = []
    for runtime, precision, make in plans:
        row = Row(runtime, precision)
        try:
            if runtime != "torch":
                log(f"exporting {runtime} {precision} ...")
            path = make()
            row.path, row.size_mb = str(path), size_mb(path)
            rows.append((row, Job(str(path), runtime, options)))
        except CvappsError as exc:
            row.error = str(exc)
            rows.append((row, None))
    return rows


def benchmark(model: str | os.PathLike[str], options: BenchmarkOptions,
              log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> list[Row]:
    """Export and measure every runtime of ``model``; the rows (also written to OUT/benchmark.json)."""
    model = Path(model)
    if not model.exists():
        raise CvappsError(f"benchmark: model not found: {model}")
    if not Path(options.data).is_dir():
        raise CvappsError(f"benchmark: --data {options.data} is not a folder")
    if options.batch < 1 or options.images < 1 or options.seconds <= 0:
        raise CvappsError("benchmark: --batch and --images must be >= 1 and --seconds > 0")
    Path(options.out).mkdir(parents=True, exist_ok=True)
    planned = prepare_rows(model, options, log)
    for i, (row, job) in enumerate(planned, 1):
        if job is None:
            continue
        log(f"[{i}/{len(planned)}] measuring {row.runtime} {row.precision} in its own process ...")
        result = run_job(job)
        row.error = result.pop("error", "")
        row.model_ips, row.e2e_ips = result.pop("model_ips", None), result.pop("e2e_ips", None)
        row.metric = result.pop("metric", None)
        if row.size_mb is None and row.path:
            row.size_mb = size_mb(Path(row.path))
        row.extra = result
    rows = [row for row, _ in planned]
    atomic_write_text(Path(options.out) / "benchmark.json", json.dumps([asdict(r) for r in rows], indent=1))
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table; ratios are to the torch row (when it ran)."""
    base = next((r for r in rows if r.runtime == "torch" and not r.error), None)
    metric = next((r.extra.get("metric_name") for r in rows if r.extra.get("metric_name")), "metric")

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def ratio(value: float | None, ref: float | None) -> str:
        return "-" if value is None or not ref else f"{value / ref:.2f}x"

    lines = [f"| runtime | precision | size MB | {metric} | model img/s | x torch | end-to-end img/s | x torch "
             "| note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r.runtime} | {r.precision} | {num(r.size_mb, '.2f')} | {num(r.metric, '.4f')} | "
                     f"{num(r.model_ips, '.1f')} | {ratio(r.model_ips, base and base.model_ips)} | "
                     f"{num(r.e2e_ips, '.1f')} | {ratio(r.e2e_ips, base and base.e2e_ips)} | {r.error or ''} |")
    return "\n".join(lines)


def _worker(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    job = Job(spec["path"], spec["runtime"], BenchmarkOptions(**spec["options"]))
    try:
        result = measure(job)
    except CvappsError as exc:
        print(json.dumps({"error": str(exc)}))
        return 0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":  # the worker process of run_job
    sys.exit(_worker(sys.argv[1:]))
