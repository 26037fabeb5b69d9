"""The user docs run as written: every ```bash / ```python block of README.md and docs/*.md is executed,
in order, from a folder that holds the shipped sample_data/, configs/, pipelines/ and benchmarks/;
```yaml / ```json blocks must parse. A block preceded by an ``<!-- no-run: why -->`` comment is not run
(installs, webcams, multi-GPU). Also: the README stays a short guide whose links resolve, no doc speaks
of sessions or issues, and docs/architecture.md names only modules that exist."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHARED = ("sample_data", "configs", "pipelines", "benchmarks")  # what the examples read, linked in
FENCE = re.compile(r"^```(\w*)\s*$")
NO_RUN = "<!-- no-run"


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    run: bool


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of ``doc``; ``run`` is False after a ``<!-- no-run ... -->`` line."""
    found, lines, i = [], doc.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        found.append(Block(doc, i + 1, match.group(1).lower(), "\n".join(lines[i + 1:end]) + "\n",
                           not before.strip().startswith(NO_RUN)))
        i = end + 1
    return found


def _sandbox(tmp_path: Path) -> Path:
    for name in SHARED:
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def _env() -> dict[str, str]:
    env = {**os.environ, "CVAPPS_OFFLINE": "1", "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "2"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # cvapps, torchrun, python
    env.pop("DISPLAY", None)
    return env


def _run(block: Block, cwd: Path) -> None:
    where = f"{block.doc.relative_to(ROOT)}:{block.line}"
    if block.lang in ("yaml", "yml"):
        yaml.safe_load(block.code)
        return
    if block.lang == "json":
        json.loads(block.code)
        return
    if block.lang in ("bash", "sh", "shell"):
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    elif block.lang == "python":
        argv = [sys.executable, "-c", block.code]
    else:  # text: layouts and diagrams
        return
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{where} failed:\n{block.code}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_code_block_runs(doc: Path, tmp_path: Path) -> None:
    cwd = _sandbox(tmp_path)
    for block in blocks(doc):
        if block.run:
            _run(block, cwd)
    if doc.name == "README.md":  # what the README says its examples write
        assert (cwd / "runs" / "detect" / "predict").is_dir() and (cwd / "runs" / "my_yolo" / "best.pt").is_file()
        coco = json.loads((cwd / "runs" / "example" / "predictions.json").read_text())
        assert coco and {r["category_id"] for r in coco} <= {1, 2, 3}
        assert (cwd / "runs" / "example" / "last.jpg").is_file()
        assert (cwd / "runs" / "example" / "classify" / "best.pt").is_file()


def test_only_installs_webcams_and_clusters_are_not_run() -> None:
    skipped = [b for doc in DOCS for b in blocks(doc) if not b.run]
    assert all(b.lang == "bash" for b in skipped)
    assert len([b for b in blocks(ROOT / "README.md") if b.run and b.lang in ("bash", "python")]) >= 6


def test_readme_is_a_short_guide_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    # the two commands, verbatim (.ci/run runs the second)
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && cvapps demo\n" in text
    test_command = "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[test]' && python -m pytest -q"
    assert test_command + "\n" in text and test_command in (ROOT / ".ci" / "run").read_text()
    # the CPU route comes before any command that installs the default (CUDA) torch
    assert text.index("download.pytorch.org/whl/cpu") < text.index("pip install -e . && cvapps demo")
    for doc in DOCS:
        for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", doc.read_text(encoding="utf-8")):
            assert (doc.parent / link).is_file(), f"{doc.name} links to a missing {link}"


def test_user_docs_speak_to_users() -> None:
    words = re.compile(r"\b(issues?|sessions?|not done|earlier runs?|before it:)", re.IGNORECASE)
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
            assert not words.search(line), f"{doc.name}:{n}: {line}"


def test_architecture_names_only_what_exists() -> None:
    tree = next(b.code for b in blocks(ROOT / "docs" / "architecture.md") if b.code.startswith("cvapps/"))
    modules = {p.name for p in (ROOT / "cvapps").rglob("*.py")}
    named = set(re.findall(r"\b(\w+\.py)\b", tree))
    assert named and named <= modules, sorted(named - modules)
    packages = {p.parent.name for p in (ROOT / "cvapps").glob("*/__init__.py")}
    listed = set(re.findall(r"^  (\w+)/", tree, re.MULTILINE))
    assert packages == listed, (sorted(packages - listed), sorted(listed - packages))
