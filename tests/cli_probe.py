"""Running commands as a user would and measuring them: ``cvapps ARGS`` in a new process with its own
peak resident memory, the one-line-error check, and the peak memory of a call in this process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: A guard only: every case is bounded by the code itself well below this.
GUARD_S = 300

# Runs the CLI and reports the process's own peak RSS (VmHWM) at exit. getrusage's ru_maxrss of a
# child would count the forked pytest process too, which is larger than any command under test.
_LAUNCHER = """
import atexit, sys
from cvapps.cli import main

def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("[peak-rss-kb " + line.split()[1] + "]\\n")

atexit.register(_peak)
sys.exit(main(sys.argv[1:]))
"""


def run_cli(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
            ) -> tuple[int, str, str, float]:
    """``cvapps ARGS`` in a new process -> (exit code, stdout, stderr, its peak RSS in MB)."""
    try:
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, *args], capture_output=True, cwd=cwd, check=False,
                              timeout=GUARD_S, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"cvapps {' '.join(args)} hung: {(exc.stderr or b'').decode(errors='replace')[-2000:]}")
    stderr = proc.stderr.decode(errors="replace")
    peak = re.search(r"\[peak-rss-kb (\d+)\]\n?", stderr)
    assert peak, stderr[-2000:]
    stderr = stderr.replace(peak.group(0), "")
    return proc.returncode, proc.stdout.decode(errors="replace"), stderr, int(peak.group(1)) / 1024


def one_line_error(rc: int, err: str) -> None:
    assert rc != 0, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("warning")]
    assert len(lines) == 1 and len(lines[0]) < 400, err[-3000:]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    return _status_mb("VmRSS:")


def peak_during(fn: Callable[[], Any]) -> tuple[Any, float, bool]:
    """(``fn()``'s result or the exception it raised, this process's peak RSS in MB while it ran,
    whether that peak is the call's own): Linux resets the high-water mark on ``5`` written to
    /proc/self/clear_refs; where that is not allowed the peak is the process's so far (an upper bound)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        own = True
    except OSError:
        own = False
    try:
        result: Any = fn()
    except BaseException as exc:  # noqa: BLE001 - the caller checks what was raised
        result = exc
    return result, _status_mb("VmHWM:"), own
