"""Synthetic tracking video with occlusions: shapes that cross paths, overlap for several frames, and
leave and re-enter the frame (``cvapps data synth --video-only --occlusion``).

The shapes video of :mod:`cvapps.data.synth` never lets two shapes overlap (they bounce off each
other), so it cannot show the everyday failure of tracking: one occlusion, one id switch, one wrong
line count. Here shapes move along two horizontal lanes in pairs going opposite ways, a few pixels
apart, so each pair overlaps (one hides most of the other) every time it meets; past the left/right
edge a shape travels on out of sight, turns, and re-enters. Writes, like :func:`generate_video`::

    out/shapes.mp4      the video (BGR, mp4v)
    out/shapes.json     per frame: boxes [x, y, w, h] (clipped to the frame), category_ids, track_ids, visibility
    out/gt.txt          MOT Challenge ground truth (frame from 1, id, box, 1, category id, visibility)
    out/crossings.json  the true crossings of the vertical middle line: {"line", "in", "out", "events"}

A shape keeps its track id for the whole video (also after leaving and re-entering). Boxes are those
of the whole shape clipped to the frame (MOT's convention: hidden parts included); a shape entirely
outside the frame has no row. Crossings follow the counter's rule (all four corners of the unclipped
box on the other side; ``in`` = from the left to the right of the line drawn top to bottom).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cvapps.data.paint import _box, _draw, _encode, _finish, _polygon, _raster, _texture
from cvapps.data.synth import CLASS_NAMES, _check_args, _video_out
from cvapps.errors import CvappsError
from cvapps.formats.mot import MotRow, write_mot
from cvapps.formats.yolo import write_data_yaml, write_yolo_labels
from cvapps.io.guard import output_root
from cvapps.io.safe_write import remove, stage, write_bytes

DATASET_SEED_BASE = 10_000  # the dataset's videos: far from the small seeds the tracking benchmark scores
DATASET_VIDEO_FRAMES = 300  # frames of each video the dataset samples
LANES = (0.27, 0.73)  # lane heights as fractions of the frame height; one crossing pair per lane


def _objects(rng: np.random.Generator, w: int, h: int) -> list[dict]:
    """Two shapes per lane, going opposite ways a little apart vertically (so they overlap when they meet)."""
    objs = []
    for lane in LANES:
        r = rng.uniform(0.13, 0.16) * min(w, h)
        offset = rng.uniform(0.15, 0.4) * r  # small: the front shape hides most of the other one
        meet = rng.uniform(0.3, 0.7) * w  # where the pair first meets
        speed = rng.uniform(1.8, 2.8)
        for side in (-1, 1):
            objs.append({"cls": int(rng.integers(0, 3)), "r": r * rng.uniform(0.92, 1.0),
                         "x": meet + side * rng.uniform(40, 70) * speed / 2, "vx": -side * speed,
                         "y0": lane * h + side * offset, "amp": rng.uniform(0, 4), "om": rng.uniform(0.02, 0.06),
                         "margin": rng.uniform(2, 10), "rot": rng.uniform(0, 2 * np.pi),
                         "col": (0, 0, 0)})
    hues = (rng.permutation(len(objs)) * 180 // len(objs) + rng.integers(0, 180 // len(objs))) % 180
    for o, hue in zip(objs, hues):  # distinct hues: the shapes can be told apart, as people by their clothes
        hsv = np.array([[[hue, rng.integers(190, 256), rng.integers(160, 256)]]], np.uint8)
        o["col"] = tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    return objs


def _step(o: dict, w: int) -> None:
    """Move one shape; beyond the frame edge (by its radius plus its margin) it turns back."""
    o["x"] += o["vx"]
    reach = o["r"] * np.sqrt(2) + o["margin"]
    if (o["x"] < -reach and o["vx"] < 0) or (o["x"] > w + reach and o["vx"] > 0):
        o["vx"] = -o["vx"]


def _side(box: np.ndarray, x_line: float) -> bool | None:
    """True left of the vertical line, False right, None while the box straddles it."""
    return True if box[0] + box[2] < x_line else False if box[0] > x_line else None


def _render(writer: cv2.VideoWriter, objs: list[dict], rng: np.random.Generator, size: tuple[int, int],
            frames: int, bar: tqdm) -> tuple[list[dict], list[dict]]:
    w, h = size
    tex = _texture(rng, h + 16, w + 16)
    gt: list[dict] = []
    events: list[dict] = []
    sides: dict[int, bool] = {}
    for f in range(frames):
        ox, oy = (int(round(8 * (1 + np.sin(2 * np.pi * f / max(frames, 1) * k)))) for k in (1, 2))
        frame = tex[oy:oy + h, ox:ox + w].copy()
        polys = []
        for o in objs:  # later shapes are drawn over earlier ones
            y = o["y0"] + o["amp"] * np.sin(o["om"] * f)
            poly = _polygon(o["cls"], o["x"], y, o["r"], o["rot"]).round(2)
            polys.append(poly)
            _draw(frame, poly, o["col"])
        writer.write(_finish(frame, rng, sigma=1.5))
        covered = np.zeros((h, w), np.uint8)
        rows: dict[str, list] = {"frame": f, "boxes": [], "category_ids": [], "track_ids": [], "visibility": []}
        for k in range(len(objs) - 1, -1, -1):
            raster = _raster(polys[k], h, w)
            area = max(1.0, float(cv2.contourArea(polys[k].astype(np.float32))))
            visible = float((raster & (1 - covered)).sum()) / area
            covered |= raster
            full = _box(polys[k])
            side = _side(full, w / 2)
            if side is not None:
                if k + 1 in sides and sides[k + 1] != side:
                    events.append({"track_id": k + 1, "frame": f + 1, "direction": "in" if sides[k + 1] else "out",
                                   "class": objs[k]["cls"] + 1})
                sides[k + 1] = side
            x1, y1 = max(0.0, full[0]), max(0.0, full[1])
            x2, y2 = min(float(w), full[0] + full[2]), min(float(h), full[1] + full[3])
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue  # entirely outside the frame
            rows["boxes"].insert(0, [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)])
            rows["category_ids"].insert(0, objs[k]["cls"] + 1)
            rows["track_ids"].insert(0, k + 1)
            rows["visibility"].insert(0, round(min(1.0, visible), 3))
        gt.append(rows)
        for o in objs:
            _step(o, w)
            o["rot"] += 0.01
        bar.update()
    return gt, events


def _write(out: Path, frames: int, size: tuple[int, int], fps: int, seed: int, bar: tqdm) -> None:
    rng = np.random.default_rng([seed, 300])
    w, h = size
    objs = _objects(rng, w, h)
    tmp = stage(out / "shapes.mp4", suffix=".mp4")
    writer = cv2.VideoWriter(tmp.writer_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        tmp.discard()
        raise CvappsError(f"{out / 'shapes.mp4'}: cv2.VideoWriter cannot write mp4v video")
    try:
        gt, events = _render(writer, objs, rng, size, frames, bar)
        writer.release()
        tmp.commit()
    finally:
        writer.release()
        tmp.discard()
    write_bytes(out / "shapes.json", json.dumps(gt).encode())
    write_mot(out / "gt.txt", [MotRow(g["frame"] + 1, tid, tuple(box), 1.0, cat, vis)  # type: ignore[arg-type]
                               for g in gt for box, cat, tid, vis in
                               zip(g["boxes"], g["category_ids"], g["track_ids"], g["visibility"])])
    crossings = {"line": [w / 2, 0.0, w / 2, float(h)], "in": sum(e["direction"] == "in" for e in events),
                 "out": sum(e["direction"] == "out" for e in events), "fps": fps, "events": events}
    write_bytes(out / "crossings.json", json.dumps(crossings, indent=1).encode())


def generate_occlusion_video(out: str | Path, *, frames: int = 300, size: tuple[int, int] = (320, 240),
                             fps: int = 25, seed: int = 0, progress: bool = True) -> Path:
    """Write the occlusion video and its ground truth (module doc) under ``out``; returns ``out``."""
    out = _video_out(out, frames, size, seed, min_side=64, what="generate_occlusion_video")
    with output_root(out, ""), tqdm(total=frames, desc="video", unit="frame", disable=not progress) as bar:
        _write(out, frames, (int(size[0]), int(size[1])), int(fps), seed, bar)
    return out


def generate_occlusion_dataset(out: str | Path, *, train: int = 600, val: int = 150, every: int = 3, seed: int = 0,
                               min_visibility: float = 0.3, progress: bool = True) -> Path:
    """Frames of occlusion videos as a YOLO-txt detection dataset (``out/images/{train,val}/*.png``,
    ``out/labels/...``, ``out/data.yaml``), to train a detector that separates overlapping shapes: the
    shapes dataset never shows two shapes overlapping, so its detector merges them.

    Every ``every``-th frame of ``DATASET_VIDEO_FRAMES``-frame occlusion videos, decoded from their mp4
    (the codec's artefacts are what a tracked video shows); train and val frames come from different
    videos, whose seeds (``DATASET_SEED_BASE + 1000 * seed + k``) never meet the small seeds the tracking
    benchmark scores on. A shape is labelled (its box clipped to the frame) when at least
    ``min_visibility`` of it is in view: mostly hidden shapes are no target. Returns ``out``."""
    out = Path(out)
    _check_args(seed, {}, {"train frames": train, "val frames": val})
    if train < 1 or val < 0 or every < 1 or not 0 <= min_visibility <= 1:
        raise CvappsError("generate_occlusion_dataset: need train >= 1, val >= 0, every >= 1, 0 <= min_visibility <= 1")
    per_video = -(-DATASET_VIDEO_FRAMES // every)
    video = DATASET_SEED_BASE + 1000 * seed
    with output_root(out, ""), tqdm(total=train + val, desc="frames", unit="img", disable=not progress) as bar:
        for split, count in (("train", train), ("val", val)):
            while count > 0:
                count -= _dataset_video(out, split, video, (every, min(count, per_video), min_visibility), bar)
                video += 1
        write_data_yaml(out / "data.yaml", CLASS_NAMES, {"train": "images/train", "val": "images/val"})
    return out


def _dataset_video(out: Path, split: str, video_seed: int, take: tuple[int, int, float], bar: tqdm) -> int:
    """Write ``take = (every, how many, min_visibility)`` frames of one video; returns how many. The
    video is made in a scratch folder inside ``out`` (nothing is written outside OUT) and removed."""
    every, count, min_visibility = take
    scratch = out / ".video_scratch"
    remove(scratch)
    try:
        folder = generate_occlusion_video(scratch, frames=DATASET_VIDEO_FRAMES, seed=video_seed, progress=False)
        gt = json.loads((folder / "shapes.json").read_text())
        cap = cv2.VideoCapture(str(folder / "shapes.mp4"))
        written = 0
        try:
            for f in range(DATASET_VIDEO_FRAMES):
                ok, frame = cap.read()
                if not ok or written == count:
                    break
                if f % every:
                    continue
                keep = [k for k, v in enumerate(gt[f]["visibility"]) if v >= min_visibility]
                boxes = np.array([gt[f]["boxes"][k] for k in keep], np.float64).reshape(-1, 4)
                boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
                name = f"occ_{video_seed}_{f:04d}"
                write_bytes(out / "images" / split / f"{name}.png", _encode(frame, ".png"))
                write_yolo_labels(out / "labels" / split / f"{name}.txt", boxes,
                                  [gt[f]["category_ids"][k] - 1 for k in keep], frame.shape[1], frame.shape[0])
                written += 1
                bar.update()
        finally:
            cap.release()
    finally:
        remove(scratch)
    return written
