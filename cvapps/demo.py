"""``cvapps demo``: train a classifier on the shipped shapes and classify the held-out images.

Runs in about a minute on two CPU cores: the predictions it prints come from the model it has
just trained, scored against the folder names of the held-out images.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from cvapps.tasks import load_config
from cvapps.engine.load import load_model
from cvapps.engine.runner import run_source
from cvapps.engine.train import train
from cvapps.errors import DataError
from cvapps.io.sinks import ClassificationCSV

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def find_sample_data() -> Path:
    for root in (Path.cwd() / "sample_data" / "shapes", PACKAGE_ROOT / "sample_data" / "shapes"):
        if (root / "classify").is_dir():
            return root
    raise DataError("sample_data/shapes not found; run from the repository root or create it with "
                    "`cvapps data synth sample_data/shapes`")


def run_demo(out: str | Path = "runs/demo", device: str = "auto", progress: bool = True) -> float:
    """Train, predict, report; returns the accuracy of the predictions on the held-out images."""
    sample = find_sample_data()
    out = Path(out)
    config = PACKAGE_ROOT / "configs" / "classify_shapes.yaml"
    cfg = load_config(config, [f"data.root={sample / 'classify'}", f"out={out / 'classify'}", f"train.device={device}"])
    t0 = time.perf_counter()
    print(f"[1/2] training a {cfg.model.backbone} classifier on {sample / 'classify'} ...")
    result = train(cfg, progress=progress)
    print(f"      trained in {time.perf_counter() - t0:.0f} s")

    val = sample / "classify" / "val"
    print(f"[2/2] classifying {val} with {result.best} ...")
    predictor = load_model(result.best, tasks="classify", device=device, batch=32).predictor()
    sink = ClassificationCSV(out / "predictions.csv", predictor.class_names)
    report = run_source(predictor, val, [sink], progress=progress)
    rows = list(csv.DictReader(sink.path.open()))
    correct = sum(Path(r["path"]).parent.name == r["label"] for r in rows)
    accuracy = correct / max(1, len(rows))
    for r in rows[:: max(1, len(rows) // 6)][:6]:
        print(f"      {Path(r['path']).parent.name + '/' + Path(r['path']).name:<28} -> {r['label']:<9} {float(r['score']):.2f}")
    print(f"{report.summary()}; {correct}/{len(rows)} correct (accuracy {accuracy:.3f}); "
          f"predictions in {sink.path}; {predictor.timing_report()}")
    return accuracy
