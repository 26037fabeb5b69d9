"""benchmarks/gpu.py runs on the CPU (tiny settings) and prints its table, ratios and decode figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_on_cpu() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--tasks",
                          "classify,detect", "--batches", "1,2", "--images", "4", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^(classify|detect)\s+(\d+)\s+(fp32|fp16)\s+(NCHW|channels_last)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
                      out.stdout, re.MULTILINE)
    assert [(r[0], r[1]) for r in rows] == [("classify", "1"), ("classify", "2"), ("detect", "1"), ("detect", "2")]
    for *_, e2e, model, ratio in rows:
        assert float(e2e) > 0 and float(model) > 0
        assert abs(float(ratio) - float(e2e) / float(model)) < 0.02 + 0.01 * float(ratio)
    assert all(r[2] == "fp32" for r in rows)  # no autocast on the CPU
    decode = re.findall(r"^\s+(.+?)\s+([\d.]+) frames/s\s+ratio to opencv ([\d.]+)$", out.stdout, re.MULTILINE)
    assert decode and decode[0][0] == "opencv (cpu)" and float(decode[0][2]) == 1.0
