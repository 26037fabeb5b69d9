#!/usr/bin/env python
"""Start-up of a one-image ``cvapps detect``: a cvapps checkpoint vs an ultralytics ``.pt``.

    python benchmarks/startup.py [--repeats 5] [--image IMG] [--ultralytics-pt FILE]

Runs, alternating, each command as a fresh process (the whole process, as a user waits for it) and
prints the median wall time of each and the ratios against the ultralytics ``.pt`` run measured in
the same loop:

* ``cvapps``: ``cvapps detect IMG --model sample_data/models/detect.pt`` (the shipped YOLO);
* ``ultralytics .pt``: ``cvapps detect IMG --model FILE`` with an ultralytics ``.pt`` (default: a
  randomly initialised ``yolov8n.yaml`` saved with ultralytics' own ``save``: the same file format
  as the published weights, which cannot be downloaded here);
* ``offline name``: ``CVAPPS_OFFLINE=1 cvapps detect IMG --model yolov8n.pt`` (no such file): how
  long the one-line "where to put the file" error takes.

Issue targets: the cvapps run no slower than the ultralytics ``.pt`` run (ratio <= 1.0); the
offline error under 5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_image() -> Path:
    return sorted((ROOT / "sample_data" / "shapes" / "images" / "val").glob("*.jpg"))[0]


def ultralytics_pt(folder: Path) -> Path:
    """A random-init yolov8n saved in ultralytics' checkpoint format (no download needed)."""
    from ultralytics import YOLO

    path = folder / "yolov8n_random.pt"
    YOLO("yolov8n.yaml").save(str(path))
    return path


def run_once(args: list[str], env: dict[str, str], expect_ok: bool) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cvapps", *args], env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if (done.returncode == 0) != expect_ok:
        raise SystemExit(f"unexpected exit {done.returncode}: {' '.join(args)}\n{done.stderr[-2000:]}")
    return took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image", type=Path, default=None)
    p.add_argument("--ultralytics-pt", type=Path, default=None)
    a = p.parse_args()
    image = a.image or default_image()
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        native = a.ultralytics_pt or ultralytics_pt(tmp_path)
        runs = {
            "cvapps checkpoint": ([str(image), "--model", str(ROOT / "sample_data/models/detect.pt")], env, True),
            "ultralytics .pt": ([str(image), "--model", str(native)], env, True),
            "offline name (error)": ([str(image), "--model", "yolov8n.pt"], {**env, "CVAPPS_OFFLINE": "1"}, False),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(a.repeats + 1):  # the first round warms the file cache and is dropped
            for name, (args, run_env, ok) in runs.items():
                t = run_once(["detect", *args, "--out", str(tmp_path / f"out_{r}"), "--quiet"], run_env, ok)
                if r:
                    times[name].append(t)
    base = statistics.median(times["ultralytics .pt"])
    print(f"one-image `cvapps detect` start-up, median of {a.repeats} fresh processes each:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:22s} {med:6.2f} s   ratio to ultralytics .pt {med / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
