"""--quiet prints nothing but errors (issue 11); --serve on a non-loopback host warns (issue 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvapps.io.preview import exposure_warning, is_loopback, parse_host_port


@pytest.mark.parametrize("spec", ["0.0.0.0:8080", "[::]:8080", "192.168.1.5:81", "camera-box:81"])
def test_serve_warns_on_non_loopback_hosts(spec: str) -> None:
    host, port = parse_host_port(spec)
    warning = exposure_warning(host, port)
    assert warning is not None and "\n" not in warning and str(port) in warning
    if host in ("0.0.0.0", "::"):
        assert "EVERY network interface" in warning


@pytest.mark.parametrize("spec", ["8080", "127.0.0.1:8080", "[::1]:8080", "localhost:8080", "127.0.0.2:1"])
def test_serve_on_loopback_is_silent(spec: str) -> None:
    host, port = parse_host_port(spec)
    assert is_loopback(host) and exposure_warning(host, port) is None


@pytest.mark.parametrize("command", ["classify", "detect"])
def test_quiet_run_prints_nothing_on_stderr(tmp_path: Path, command: str) -> None:
    from tiny_checkpoints import SHAPES, make_checkpoint

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((40, 56, 3), 60 * i, np.uint8))
    if command == "classify":
        model = str(make_checkpoint(tmp_path / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES))
    else:
        model = "yolov8n.yaml"  # a native ultralytics model: its logger must stay quiet too
    env = {**os.environ, "YOLO_VERBOSE": "True", "YOLO_OFFLINE": "1"}
    base = [sys.executable, "-m", "cvapps", command, str(folder), "--model", model, "--device", "cpu"]
    quiet = subprocess.run([*base, "--out", str(tmp_path / "b"), "--quiet"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    if command == "classify":  # the same run without --quiet does print: the test can fail
        loud = subprocess.run([*base, "--out", str(tmp_path / "a")], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)
        assert loud.returncode == 0 and "frames/s" in loud.stderr


def test_max_file_mb_option_skips_big_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cvapps.cli import main
    from cvapps.io.images import DEFAULT_MAX_FILE_MB, max_file_bytes
    from tiny_checkpoints import SHAPES, make_checkpoint

    ckpt = make_checkpoint(tmp_path / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "small.png"), np.zeros((20, 20, 3), np.uint8))
    cv2.imwrite(str(folder / "big.bmp"), np.zeros((800, 800, 3), np.uint8))  # 1.9 MB
    rc = main(["classify", str(folder), "--model", str(ckpt), "--out", str(tmp_path / "o"), "--quiet",
               "--device", "cpu", "--max-file-mb", "1"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "big.bmp: file too large" in err and "small.png" not in err
    assert (tmp_path / "o" / "predictions.csv").read_text().count("small.png") == 1
    assert max_file_bytes() == DEFAULT_MAX_FILE_MB << 20  # the option does not outlive the command
    assert main(["classify", str(folder), "--model", str(ckpt), "--out", str(tmp_path / "o2"),
                 "--max-file-mb", "0"]) == 1
