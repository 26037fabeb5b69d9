"""Helpers the benchmarks share: alternating repeats, noise, and the minimal loop they compare with.

Timings on a shared machine are noisy, so every benchmark measures its cases in the same process,
alternating them ``repeats`` times, and reports the best run of each and the ratios of those
bests (ratios within one run, never figures from different runs). The spread (worst/best) of each
case is printed too, so a reader can see how quiet the machine was.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout

import cvapps  # noqa: F401 - before torch: OpenMP workers sleep, as in the CLI (cvapps/threads.py)


def alternate(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each case (returns a rate, higher is better) once per round, ``repeats`` rounds."""
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(max(1, repeats)):
        for name, case in cases.items():
            rates[name].append(case())
    return rates


def best(rates: dict[str, list[float]]) -> dict[str, float]:
    return {name: max(values) for name, values in rates.items()}


def paired_ratio(rates: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float]:
    """(median, lowest, highest) of ``a / b`` over the rounds: each round's two runs sat side by side,
    so a slow spell of the machine hits both; steadier than the ratio of two bests."""
    ratios = [x / y for x, y in zip(rates[a], rates[b])]
    return statistics.median(ratios), min(ratios), max(ratios)


def ratio_summary(rates: dict[str, list[float]], a: str, b: str) -> str:
    """``a / b`` as "X.XXX best/best, Y.YYY median of N side-by-side rounds (lo-hi)": the two views
    every benchmark prints for a ratio (best runs, and the steadier paired median)."""
    bests = best(rates)
    median, low, high = paired_ratio(rates, a, b)
    return (f"{bests[a] / bests[b]:.3f} best/best, {median:.3f} median of the {len(rates[a])} side-by-side rounds "
            f"({low:.2f}-{high:.2f})")


def print_spreads(rates: dict[str, list[float]], indent: str = "  ", width: int = 28) -> None:
    for name, values in rates.items():
        print(f"{indent}{name:{width}} {spread(values)}")


def spread(values: Sequence[float]) -> str:
    """``best (worst/best ratio)``: how much the repeats of one case disagreed."""
    return f"{max(values):9.1f}/s  (worst/best {min(values) / max(values):.2f})"


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def minimal_loop(predictor: Any, paths: Sequence[str], options: dict[str, Any]) -> float:
    """images/s of the simplest serial loop over image files with the predictor's own model, batch,
    memory layout, preprocessing and postprocessing: cv2.imread -> task.preprocess -> stack ->
    model -> task.postprocess. No threads, no checks, no outputs: what a user would write by hand."""
    import cv2
    import numpy as np
    import torch

    from cvapps.engine.device import images_to_device

    task, fmt = predictor.task, predictor.memory_format
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), predictor.batch):
            prepared = [task.preprocess(cv2.imread(p), predictor.imgsz, predictor.in_channels, rect=predictor.rect)
                        for p in paths[i:i + predictor.batch]]
            if len({a.shape for a, _ in prepared}) > 1:  # mixed shapes: one by one (rare in a folder)
                groups = [[p] for p in prepared]
            else:
                groups = [prepared]
            for group in groups:
                images = torch.from_numpy(np.stack([a for a, _ in group])).permute(0, 3, 1, 2)
                outputs = predictor.model(images_to_device(images, predictor.device, fmt))
                task.postprocess(outputs, [m for _, m in group], **options)
    return rate(len(paths), time.perf_counter() - t0)


def folder_paths(folder: Path) -> list[str]:
    from cvapps.io.sources.files import iter_image_files

    return list(iter_image_files(folder))
