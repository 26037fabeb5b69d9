"""Regenerate the small checkpoints that ``cvapps demo`` ships in ``sample_data/models/``.

    python sample_data/make_models.py            # a few minutes on 2 CPU cores

Trains the shipped configs (``configs/*_shapes.yaml``) on ``sample_data/shapes`` on the CPU with a
fixed seed and fewer epochs than the configs' defaults, keeps each run's ``best.pt`` without its
optimizer state and in float16 (about 5 MB for the three), and prints the validation metrics each
model reaches. Scratch runs go to ``runs/make_models/``.

The seed fixes the initial weights and the shuffle order; the albumentations pipeline draws from its
own generator, so a rerun gives slightly different weights of the same quality. Last run (2 CPU
cores shared with other jobs, about 8 minutes): classify accuracy 0.992 (epoch 15 of 16; a rerun
also 0.992), segment mIoU 0.884 incl. background (pixel accuracy 0.984), detect mAP@.5 0.977
(mAP@.5:.95 0.796), all on the val splits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout, installed or not

from cvapps.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from cvapps.engine.train import train  # noqa: E402
from cvapps.tasks import load_config  # noqa: E402

SEED = 0
# name -> (config, data root relative to the repository, epochs, the metric reported)
MODELS: dict[str, tuple[str, str, int, str]] = {
    "classify": ("configs/classify_shapes.yaml", "sample_data/shapes/classify", 16, "accuracy"),
    "segment": ("configs/segment_shapes.yaml", "sample_data/shapes", 30, "miou"),
    "detect": ("configs/yolo_shapes.yaml", "sample_data/shapes", 40, "map50"),
}


def make(name: str, scratch: Path, models: Path) -> dict[str, float]:
    """Train one model; write ``models/<name>.pt``; return its validation metrics."""
    config, data, epochs, _ = MODELS[name]
    # Relative data.root: the config stored in the checkpoint then holds no path of this machine.
    cfg = load_config(ROOT / config, [f"data.root={data}", f"out={scratch / name}", f"train.epochs={epochs}",
                                      f"train.seed={SEED}", "train.device=cpu", "data.workers=0"])
    result = train(cfg, progress=False)
    ckpt = shrink(load_checkpoint(result.best))
    models.mkdir(parents=True, exist_ok=True)
    save_checkpoint(models / f"{name}.pt", ckpt)
    return {k[4:]: v for k, v in ckpt["metrics"].items() if k.startswith("val/")}


def shrink(ckpt: dict) -> dict:
    """Inference only: no optimizer state, float weights stored as float16 (half the bytes; loading
    copies them into the float32 model, and the predictions do not change at these sizes)."""
    model = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    return {**ckpt, "model": model, "train_state": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"which models, of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--out", default=str(ROOT / "sample_data" / "models"), help="where the .pt files go")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    os.chdir(ROOT)
    scratch = Path("runs") / "make_models"  # relative (cwd is ROOT): the stored config names no path here
    for name in args.names or list(MODELS):
        metrics = make(name, scratch, Path(args.out))
        key = MODELS[name][3]
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if "/" not in k)
        print(f"{name}: val {key} {metrics.get(key, float('nan')):.3f} ({shown}) -> {Path(args.out) / (name + '.pt')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
