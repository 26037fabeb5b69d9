"""Are the outputs of this checkout byte for byte those of another commit? (refactors must not change them)

Runs the same commands on the shipped sample data with two checkouts, the working tree and ``--base``
(a commit, checked out into a temporary git worktree), and compares every file they write:

    python benchmarks/compare_outputs.py --base eca4308            # all cases
    python benchmarks/compare_outputs.py --base eca4308 --skip ray  # without the Ray case (slow start)

Cases: ``cvapps demo``; detect, segment and classify on the sample folder and the sample video
(COCO JSON pair, CSV, annotated images and videos); ``--track`` with a counting line and a zone
(MOT file, counts.json, COCO with track ids); ``--ray`` detect on the folder. Files of a kind one of
the two checkouts does not write, and JSON lines (``--save-jsonl``, whose shape a refactor may change on
purpose), are listed, not compared. Exit status 0 when every compared file is identical, else 1.
The base outputs are kept in ``--cache`` by commit, so a second comparison re-runs only this checkout.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
MODELS = SAMPLE / "models"
IMAGES = SAMPLE / "shapes" / "images" / "val"
VIDEO = SAMPLE / "shapes" / "video" / "shapes.mp4"
NOT_COMPARED = (".jsonl",)

# name -> cvapps arguments (OUT is appended as --out); every case runs on CPU with no progress bars.
CASES: dict[str, list[str]] = {
    "demo": ["demo", "--quiet"],
    "detect_folder": ["detect", str(IMAGES), "--model", str(MODELS / "detect.pt"), "--save-json"],
    "detect_video": ["detect", str(VIDEO), "--model", str(MODELS / "detect.pt")],
    "segment_folder": ["segment", str(IMAGES), "--model", str(MODELS / "segment.pt"), "--save-json"],
    "segment_video": ["segment", str(VIDEO), "--model", str(MODELS / "segment.pt")],
    "classify_folder": ["classify", str(SAMPLE / "shapes" / "classify" / "val"), "--model", str(MODELS / "classify.pt")],
    "track_count": ["detect", str(VIDEO), "--model", str(MODELS / "detect.pt"), "--track", "bytetrack",
                    "--count-line", "0,80,160,80", "--zone", "10,10,150,10,150,150,10,150", "--save-jsonl"],
    "ray": ["detect", str(IMAGES), "--model", str(MODELS / "detect.pt"), "--save-json", "--ray", "--ray-actors", "1"],
}


def run_cases(checkout: Path, out: Path, cases: list[str]) -> None:
    """Run ``cases`` with the cvapps package of ``checkout`` into ``out/<case>``."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "CVAPPS_QUIET": "1"}
    where = subprocess.run([sys.executable, "-c", "import cvapps; print(cvapps.__file__)"], cwd=checkout, env=env,
                           capture_output=True, text=True, check=False).stdout.strip()
    if not where.startswith(str(checkout)):
        sys.exit(f"{checkout}: python imports cvapps from {where!r}, not from this checkout")
    for name in cases:
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        cmd = [sys.executable, "-m", "cvapps", *CASES[name], "--out", str(target)]
        if name != "demo":
            cmd += ["--device", "cpu", "--quiet"]
        proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{checkout.name}: {name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        print(f"  {name}: ok", flush=True)


def same_text(a: Path, b: Path, roots: tuple[str, str]) -> bool:
    """Equal once each checkout's own path is written as ROOT (the demo writes absolute input paths)."""
    try:
        ta, tb = a.read_text(), b.read_text()
    except UnicodeDecodeError:
        return False
    return ta.replace(roots[0], "ROOT") == tb.replace(roots[1], "ROOT")


def same_video(a: Path, b: Path) -> bool:
    """Same frame count and frames within encoder noise: libx264 output of the demo's detect video is
    not byte-stable from run to run even with one checkout (measured: 14 of 240 frames, mean abs
    difference <= 0.06 of 255), so videos are compared decoded, at 0.5 grey levels per frame."""
    def frames(path: Path) -> list:
        cap, out = cv2.VideoCapture(str(path)), []
        while True:
            ok, frame = cap.read()
            if not ok:
                return out
            out.append(frame.astype("int16"))

    fa, fb = frames(a), frames(b)
    return len(fa) == len(fb) and all(abs(x - y).mean() <= 0.5 for x, y in zip(fa, fb))


def compare(base: Path, head: Path, roots: tuple[str, str]) -> tuple[int, list[str], list[str]]:
    """(files compared, files that differ, files listed but not compared)."""
    base_files = {p.relative_to(base) for p in base.rglob("*") if p.is_file()}
    head_files = {p.relative_to(head) for p in head.rglob("*") if p.is_file()}
    differ, listed, compared = [], [], 0
    for rel in sorted(base_files | head_files):
        if rel.suffix in NOT_COMPARED or rel not in base_files or rel not in head_files:
            where = "both" if rel in base_files and rel in head_files else ("base only" if rel in base_files else "head only")
            listed.append(f"{rel} ({where})")
            continue
        compared += 1
        a, b = base / rel, head / rel
        if filecmp.cmp(a, b, shallow=False):
            continue
        if rel.suffix in (".csv", ".json", ".txt") and same_text(a, b, roots):
            continue
        if rel.suffix == ".mp4" and same_video(a, b):
            listed.append(f"{rel} (same frames within encoder noise, bytes differ)")
            continue
        differ.append(str(rel))
    return compared, differ, listed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="commit (or ref) to compare with")
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(CASES), help="cases to leave out")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cvapps_compare_outputs")
    args = parser.parse_args()
    cases = [c for c in CASES if c not in args.skip]
    sha = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    base_out = args.cache / f"base-{sha}"
    missing = [c for c in cases if not (base_out / c).is_dir()]
    worktree = args.cache / f"tree-{sha}"
    if missing:
        if not worktree.exists():
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), sha], cwd=ROOT, check=True,
                           capture_output=True)
        print(f"base {sha}: running {', '.join(missing)}", flush=True)
        run_cases(worktree, base_out, missing)
    head_out = args.cache / "head"
    print("this checkout: running", ", ".join(cases), flush=True)
    run_cases(ROOT, head_out, cases)
    total_differ = 0
    for name in cases:
        compared, differ, listed = compare(base_out / name, head_out / name, (str(worktree), str(ROOT)))
        total_differ += len(differ)
        print(f"{name}: {compared} files compared, {len(differ)} differ" + (f": {differ[:5]}" if differ else ""))
        for item in listed:
            print(f"    not compared: {item}")
    print("identical" if total_differ == 0 else f"{total_differ} files differ")
    sys.exit(1 if total_differ else 0)


if __name__ == "__main__":
    main()
