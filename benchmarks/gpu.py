#!/usr/bin/env python
"""GPU throughput per task: end to end vs the model alone at batch 1/8/32, and decode on the GPU.

    python benchmarks/gpu.py [--device cuda] [--batches 1,8,32] [--images 512] [--tasks classify,segment,detect]
    python benchmarks/gpu.py --device cpu --batches 1,2 --images 8 --repeats 1      # the CPU smoke run

For each task (the checkpoints in sample_data/models, or ``--model TASK=PATH``) and batch size:

* end to end: ``run_source`` over ``--images`` image files (the sample images, listed repeatedly):
  read + decode, letterbox, host-to-device copy, forward, postprocess back to original pixels, the
  predictor's threads; on CUDA with fp16 autocast and channels_last (the predictor's defaults there).
* model only: the same model, batch, precision and layout on uint8 batches already on the device
  (uint8 -> float, forward, synchronize): the ceiling the pipeline is measured against.
* ``ratio end-to-end / model-only``.

Decode: the sample video decoded by OpenCV on the CPU and, where available, by torchcodec on the
device (NVDEC on CUDA) or PyAV with a hardware decoder; prints frames/s and the ratio to OpenCV.
Each figure is the best of ``--repeats`` alternating runs.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import ROOT, best, folder_paths, rate

MODELS = ROOT / "sample_data" / "models"
VIDEO = ROOT / "sample_data" / "shapes" / "video" / "shapes.mp4"
FOLDERS = {"classify": ROOT / "sample_data" / "shapes" / "classify" / "val",
           "segment": ROOT / "sample_data" / "shapes" / "images" / "val",
           "detect": ROOT / "sample_data" / "shapes" / "images" / "val"}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def end_to_end(predictor, paths: list[str]) -> float:
    from cvapps.engine.runner import run_source

    _sync(predictor.device)
    report = run_source(predictor, list(paths), [], progress=False, handle_signals=False)
    _sync(predictor.device)
    return report.fps


def model_only(predictor, paths: list[str], batch: int) -> float:
    """images/s of uint8 -> float -> model on batches already on the device (same layout, precision)."""
    import cv2
    import numpy as np
    import torch

    from cvapps.engine.device import images_to_device

    fmt, device = predictor.memory_format, predictor.device
    arrays = [predictor.task.preprocess(cv2.imread(p), predictor.imgsz, predictor.in_channels)[0]
              for p in paths[:batch]]
    while len(arrays) < batch:
        arrays += arrays[:batch - len(arrays)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device)
    n_batches = max(1, len(paths) // batch)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=predictor.half):
        predictor.model(images_to_device(images, device, fmt))  # warm-up (cuDNN autotune, allocator)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            predictor.model(images_to_device(images, device, fmt))
        _sync(device)
    return rate(n_batches * batch, time.perf_counter() - t0)


def decoders(device) -> dict:
    """name -> callable returning frames/s of decoding the sample video; only those available here."""
    import cv2

    def opencv() -> float:
        t0, cap, n = time.perf_counter(), cv2.VideoCapture(str(VIDEO)), 0
        while cap.read()[0]:
            n += 1
        return rate(n, time.perf_counter() - t0)

    found = {"opencv (cpu)": opencv}
    try:
        from torchcodec.decoders import VideoDecoder  # optional: lazy import

        def torchcodec() -> float:
            t0 = time.perf_counter()
            dec = VideoDecoder(str(VIDEO), device=str(device))
            n = 0
            for frame in dec:
                n += 1
            _sync(device)
            return rate(n, time.perf_counter() - t0)

        torchcodec()  # fails here if this build cannot decode on this device
        found[f"torchcodec ({device.type})"] = torchcodec
    except Exception as exc:  # noqa: BLE001 - not installed, no NVDEC, no codec: reported, not fatal
        print(f"(torchcodec decode on {device.type} unavailable: {type(exc).__name__}: {str(exc)[:100]})")
    if device.type == "cuda":
        try:
            import av  # optional: lazy import

            def pyav_cuda() -> float:
                t0 = time.perf_counter()
                with av.open(str(VIDEO), hwaccel=av.codec.hwaccel.HWAccel("cuda")) as container:
                    n = sum(1 for _ in container.decode(video=0))
                return rate(n, time.perf_counter() - t0)

            pyav_cuda()
            found["pyav (cuda hwaccel)"] = pyav_cuda
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            print(f"(PyAV hardware decode unavailable: {type(exc).__name__}: {str(exc)[:100]})")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--images", type=int, default=512, help="images per end-to-end run")
    p.add_argument("--tasks", default="classify,segment,detect")
    p.add_argument("--model", action="append", default=[], metavar="TASK=PATH", help="another checkpoint for a task")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    from cvapps.api import load
    from cvapps.engine.device import resolve_device

    device = resolve_device(args.device)
    models = {t: MODELS / f"{t}.pt" for t in args.tasks.split(",")}
    models.update(dict(m.split("=", 1) for m in args.model))
    batches = [int(b) for b in args.batches.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}), torch {torch.__version__}, {args.images} images per run, best of {args.repeats}")
    print(f"{'task':10}{'batch':>6}{'precision':>10}{'layout':>15}{'end-to-end/s':>14}{'model-only/s':>14}{'ratio':>7}")
    for task, path in models.items():
        folder = FOLDERS.get(task, FOLDERS["detect"])
        files = folder_paths(folder)
        paths = (files * (args.images // max(1, len(files)) + 1))[:args.images]
        for batch in batches:
            predictor = load(path, device=str(device), batch=batch).predictor
            end_to_end(predictor, paths[:max(batch, 2)])  # warm-up: layout, cuDNN, allocator
            e2e, mo = [], []
            for _ in range(max(1, args.repeats)):
                e2e.append(end_to_end(predictor, paths))
                mo.append(model_only(predictor, paths, batch))
            layout = "channels_last" if predictor.memory_format == torch.channels_last else "NCHW"
            precision = "fp16" if predictor.half else "fp32"
            print(f"{task:10}{batch:>6}{precision:>10}{layout:>15}{max(e2e):>14.1f}{max(mo):>14.1f}"
                  f"{max(e2e) / max(mo):>7.2f}")
    print("\ndecode of the sample video:")
    found = decoders(device)
    rates = best({k: [fn() for _ in range(max(1, args.repeats))] for k, fn in found.items()})
    base = rates["opencv (cpu)"]
    for k, v in rates.items():
        print(f"  {k:24}{v:10.1f} frames/s  ratio to opencv {v / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
