"""Deterministic synthetic "shapes" dataset: circles, squares and triangles on textured backgrounds.

``generate_shapes(out)`` (sizes and counts: a :class:`SynthSpec`) writes one folder that serves every
task of cvapps::

    out/
      images/{train,val}/shapes_000000.jpg   detection/segmentation images (imgsz x imgsz, BGR JPEG)
      annotations/{train,val}.json           COCO: bbox [x,y,w,h], polygon segmentation, area
      masks/{train,val}/shapes_000000.png    uint8 labels: 0 background, 1..3 class, 255 ignore band
      labels/{train,val}/shapes_000000.txt   YOLO txt "cls xc yc w h" (normalised, cls 0-based)
      data.yaml                              ultralytics dataset file (paths relative to this file)
      classify/{train,val}/<class>/<class>_0000.png   single-shape crops (classification ROOT)
      video/shapes.mp4, video/shapes.json    bouncing shapes + per-frame ground-truth boxes and track ids
      video/gt.txt                           the same as MOT Challenge ground truth (cvapps.formats.mot)

Classes are ``CLASS_NAMES``: mask value / COCO category id = index + 1, YOLO id = index.
Geometry lives in COCO pixel coordinates (pixel i covers [i, i+1)); cv2 puts pixel centres on
integers, so polygons are shifted by -0.5 when drawn, which makes pycocotools' rasterisation of
the polygon and the PNG mask agree except on the 255 boundary band. Same seed -> identical files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cvapps.data.paint import (
    _SHIFT,
    _box,
    _colour,
    _draw,
    _encode,
    _finish,
    _iou,
    _polygon,
    _pts,
    _raster,
    _texture,
)
from cvapps.errors import CvappsError, shorten
from cvapps.formats.mot import MotRow, write_mot
from cvapps.io.guard import output_root
from cvapps.io.safe_write import ensure_dir, open_dir, stage, write_bytes

CLASS_NAMES = ("circle", "square", "triangle")
_SPLITS = ("train", "val")
_OWN = {"images", "annotations", "masks", "labels", "classify", "video", "data.yaml", "README.md"}
_JPEG_QUALITY = 85  # ~4 KB per 160x160 image keeps the shipped copy small


_MAX_COUNT = 1_000_000  # images, crops or frames of one kind
_MAX_SIDE = 2048  # pixels: a 2048 px scene already takes a few hundred MB of float32 work arrays


def _atomic_write(path: Path, data: bytes) -> None:
    """The one write primitive (:mod:`cvapps.io.safe_write`): a temp file inside OUT through no link,
    renamed into place, so readers never see half a file."""
    write_bytes(path, data)


def _check_args(seed: int, sides: dict[str, int], counts: dict[str, int]) -> None:
    """One line, before any work, for arguments that would fail late (a negative seed) or allocate
    without bound (``--imgsz 100000`` is a 149 GiB image)."""
    if not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise CvappsError(f"seed must be an integer in [0, 2**63), got {shorten(seed)}")
    for name, value in sides.items():
        if not 32 <= value <= _MAX_SIDE:
            raise CvappsError(f"{name} must be in [32, {_MAX_SIDE}] pixels, got {value}")
    for name, value in counts.items():
        if not 0 <= value <= _MAX_COUNT:
            raise CvappsError(f"{name} must be in [0, {_MAX_COUNT}], got {value}")


def _scene(rng: np.random.Generator, imgsz: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One detection image, its label mask and its shapes (drawn in list order)."""
    bg = _texture(rng, imgsz, imgsz)
    img = np.clip(bg, 0, 255).astype(np.uint8)
    mask = np.zeros((imgsz, imgsz), np.uint8)
    shapes: list[dict] = []
    for _ in range(int(rng.integers(1, 5))):
        for _try in range(50):  # rejection sampling; give up on this shape if the image is full
            cls = int(rng.integers(0, 3))
            r = rng.uniform(0.18, 0.45) * imgsz / 2
            cx, cy = rng.uniform(r + 1, imgsz - 1 - r, 2)
            poly = _polygon(cls, cx, cy, r, rng.uniform(0, 2 * np.pi)).round(2)
            box, m = _box(poly), _raster(poly, imgsz, imgsz)
            # "non-overlapping-ish": box IoU < 0.3 and pixel overlap <= 10% of the smaller shape
            if all(_iou(box, s["box"]) < 0.3 and (m & s["m"]).sum() <= 0.1 * min(m.sum(), s["m"].sum())
                   for s in shapes):
                break
        else:
            continue
        x, y, bw, bh = (int(v) for v in (box + [0, 0, 1, 1]).clip(0, imgsz))
        _draw(img, poly, _colour(rng, bg[y:y + bh, x:x + bw].reshape(-1, 3).mean(0)))
        cv2.fillPoly(mask, _pts(poly), cls + 1, cv2.LINE_8, shift=_SHIFT)
        cv2.polylines(mask, _pts(poly), True, 255, 1, cv2.LINE_8, shift=_SHIFT)  # VOC-style ignore band
        shapes.append({"cls": cls, "poly": poly, "box": box, "m": m})
    return _finish(img, rng), mask, shapes


def _crop(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """One classification crop: a single shape, 45-80% of the crop, randomly offset."""
    bg = _texture(rng, size, size)
    img = np.clip(bg, 0, 255).astype(np.uint8)
    r = rng.uniform(0.45, 0.80) * size / 2
    slack = max(size / 2 - r - 1, 0.0)
    cx, cy = size / 2 + rng.uniform(-slack, slack, 2)
    _draw(img, _polygon(cls, cx, cy, r, rng.uniform(0, 2 * np.pi)), _colour(rng, bg.reshape(-1, 3).mean(0)))
    return img  # no pixel noise: lossless PNG of noise would triple the size; augmentation can add it


def _reach(cls: int, r: float) -> float:
    """Radius of the circle around a shape of :func:`_polygon` (a square's corners reach r * sqrt 2)."""
    return r * np.sqrt(2) if cls == 1 else r


def _collide(objs: list[dict]) -> None:
    """Shapes bounce off each other like equal billiard balls (their circumscribed circles touch), so
    they never overlap and keep their identities readable: tracking ground truth without occlusion."""
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            a, b = objs[i], objs[j]
            d = a["p"] - b["p"]
            dist = float(np.linalg.norm(d))
            if dist >= _reach(a["cls"], a["r"]) + _reach(b["cls"], b["r"]) or dist == 0:
                continue
            n = d / dist
            rel = float(np.dot(a["v"] - b["v"], n))
            if rel < 0:  # approaching: swap the velocity components along the line of centres
                a["v"], b["v"] = a["v"] - rel * n, b["v"] + rel * n


def _video(path: Path, rng: np.random.Generator, frames: int, size: tuple[int, int], fps: int, bar: tqdm) -> list[dict]:
    """Bouncing shapes over a slowly panning, cross-fading texture; returns per-frame boxes."""
    w, h = size
    pan = 24  # the background window drifts by up to this many pixels
    tex_a, tex_b = (_texture(rng, h + 2 * pan, w + 2 * pan) for _ in range(2))
    objs = []
    for _ in range(int(rng.integers(2, 4))):
        r = rng.uniform(0.12, 0.22) * min(w, h)
        ang = rng.uniform(0, 2 * np.pi)
        cls = int(rng.integers(0, 3))
        for _try in range(50):  # shapes start apart (as in the training images, which barely overlap)
            pos = rng.uniform([r + 1, r + 1], [w - 1 - r, h - 1 - r])
            if all(np.linalg.norm(pos - o["p"]) > _reach(cls, r) + _reach(o["cls"], o["r"]) + 2 for o in objs):
                break
        objs.append({"cls": cls, "r": r, "p": pos,
                     "v": rng.uniform(1.0, 3.0) * np.array([np.cos(ang), np.sin(ang)]),
                     "rot": rng.uniform(0, 2 * np.pi), "spin": rng.uniform(-0.03, 0.03),
                     "col": _colour(rng, tex_a.reshape(-1, 3).mean(0))})
    tmp = stage(path, suffix=".mp4")  # cv2 picks the container from the suffix
    writer = cv2.VideoWriter(tmp.writer_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        tmp.discard()
        raise CvappsError(f"{path}: cv2.VideoWriter cannot write mp4v video")
    gt: list[dict] = []
    try:
        for f in range(frames):
            ph = 2 * np.pi * f / max(frames, 1)
            ox, oy = (int(round(pan * (1 + np.sin(k * ph)))) for k in (1, 2))  # smooth Lissajous drift
            a = 0.5 - 0.5 * np.cos(ph)
            frame = np.clip((1 - a) * tex_a + a * tex_b, 0, 255)[oy:oy + h, ox:ox + w].astype(np.uint8)
            boxes, cats, rasters = [], [], []
            for o in objs:
                poly = _polygon(o["cls"], o["p"][0], o["p"][1], o["r"], o["rot"]).round(2)
                _draw(frame, poly, o["col"])
                boxes.append([round(float(v), 2) for v in _box(poly)])
                cats.append(o["cls"] + 1)
                rasters.append(_raster(poly, h, w))
                o["p"] = o["p"] + o["v"]
                o["rot"] += o["spin"]
                for k, lim in ((0, w), (1, h)):  # bounce off the walls (circumscribed circle stays inside)
                    if not o["r"] + 1 <= o["p"][k] <= lim - 1 - o["r"]:
                        o["v"][k] = -o["v"][k]
                        o["p"][k] = np.clip(o["p"][k], o["r"] + 1, lim - 1 - o["r"])
            _collide(objs)
            writer.write(_finish(frame, rng, sigma=1.5))
            covered = np.zeros((h, w), np.uint8)  # shapes are drawn in list order: later ones hide earlier ones
            visibility = [0.0] * len(rasters)
            for k in range(len(rasters) - 1, -1, -1):
                visibility[k] = round(float((rasters[k] & (1 - covered)).sum() / max(1, rasters[k].sum())), 3)
                covered |= rasters[k]
            gt.append({"frame": f, "boxes": boxes, "category_ids": cats, "track_ids": list(range(1, len(objs) + 1)),
                       "visibility": visibility})
            bar.update()
        writer.release()
        tmp.commit()
    finally:
        writer.release()
        tmp.discard()  # (after a commit: nothing left to remove) SIGTERM/Ctrl-C: no 6 MB temp file left
    return gt


def _check_out(out: Path) -> None:
    """Refuse to write into anything but an empty folder or a previous shapes dataset."""
    if out.exists() and not out.is_dir():
        raise CvappsError(f"{out}: exists and is not a directory")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN and not p.name.endswith(".tmp"))
        if foreign:
            raise CvappsError(f"{out}: not empty and not a shapes dataset (has {', '.join(foreign[:3])}); "
                              "pick an empty or new folder")


def _prune(folder: Path, keep: set[str]) -> None:
    """Drop files of an earlier, larger run so the folder holds exactly this run's files (names in
    the folder reached the safe way: a planted link is refused, never listed through)."""
    with open_dir(folder) as fd:
        for name in os.listdir(fd):
            if os.path.splitext(name)[1] in {".jpg", ".png", ".txt"} and name not in keep:
                os.unlink(name, dir_fd=fd)  # the name itself, whatever it is (never a folder here)


@dataclass(frozen=True)
class SynthSpec:
    """Sizes and counts of the shapes dataset :func:`generate_shapes` writes (the defaults are those
    of ``cvapps data synth`` and of the shipped ``sample_data/shapes``).

    n_train: detection/segmentation train images (>= 1).
    n_val: val images (>= 0).
    imgsz: side of each (square) detection/segmentation image, pixels (32..2048).
    n_crops_per_class: ``(train, val)`` classification crops per class.
    crop_size: side of each (square) classification crop, pixels (>= 16).
    video_frames: frames of the sample video (>= 1).
    video_size: ``(width, height)`` of the sample video, pixels (each 32..2048).
    fps: frame rate written into the sample video.
    """

    n_train: int = 120
    n_val: int = 40
    imgsz: int = 160
    n_crops_per_class: tuple[int, int] = (200, 40)
    crop_size: int = 64
    video_frames: int = 240
    video_size: tuple[int, int] = (320, 240)
    fps: int = 24


def generate_shapes(out: str | Path, spec: SynthSpec = SynthSpec(), *, seed: int = 0,
                    progress: bool = True) -> Path:
    """Write the shapes dataset (layout in the module docstring, sizes and counts from ``spec``)
    under ``out`` and return it."""
    out = Path(out)
    s = spec
    if s.n_train < 1 or s.n_val < 0 or s.imgsz < 32 or s.crop_size < 16 or s.video_frames < 1 \
            or min(s.video_size) < 32:
        raise CvappsError("generate_shapes: need n_train >= 1, n_val >= 0, imgsz >= 32, crop_size >= 16, "
                          "video_frames >= 1 and video sides >= 32")
    _check_args(seed, {"imgsz": s.imgsz, "crop size": max(32, s.crop_size), "video width": s.video_size[0],
                       "video height": s.video_size[1]},
                {"train images": s.n_train, "val images": s.n_val, "crops per class": max(s.n_crops_per_class),
                 "video frames": s.video_frames})
    with output_root(out, ""):
        _check_out(out)
        _shapes(out, spec, seed, progress)
    return out


def _shapes(out: Path, spec: SynthSpec, seed: int, progress: bool) -> None:
    n_train, n_val, imgsz = spec.n_train, spec.n_val, spec.imgsz
    n_crops_per_class, crop_size = spec.n_crops_per_class, spec.crop_size
    video_frames, video_size, fps = spec.video_frames, spec.video_size, spec.fps
    ensure_dir(out)
    counts = {"train": n_train, "val": n_val}
    total = n_train + n_val + len(CLASS_NAMES) * sum(n_crops_per_class) + video_frames
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)]
    with tqdm(total=total, desc="shapes", unit="file", disable=not progress) as bar:
        for split_id, split in enumerate(_SPLITS):
            images, anns, stems = [], [], set()
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, split_id, i])  # per-image stream: files independent
                img, mask, shapes = _scene(rng, imgsz)
                stem = f"shapes_{i:06d}"
                stems.add(stem)
                _atomic_write(out / "images" / split / f"{stem}.jpg",
                              _encode(img, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY)))
                _atomic_write(out / "masks" / split / f"{stem}.png", _encode(mask, ".png"))
                images.append({"id": i + 1, "file_name": f"{stem}.jpg", "width": imgsz, "height": imgsz})
                lines = []
                for s in shapes:
                    x, y, bw, bh = (float(v) for v in s["box"].round(2))
                    anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": s["cls"] + 1,
                                 "bbox": [x, y, bw, bh], "area": float(s["m"].sum()), "iscrowd": 0,
                                 "segmentation": [[float(v) for v in s["poly"].ravel()]]})
                    lines.append(f"{s['cls']} {(x + bw / 2) / imgsz:.6f} {(y + bh / 2) / imgsz:.6f} "
                                 f"{bw / imgsz:.6f} {bh / imgsz:.6f}\n")
                _atomic_write(out / "labels" / split / f"{stem}.txt", "".join(lines).encode())
                bar.update()
            for sub, ext in (("images", ".jpg"), ("masks", ".png"), ("labels", ".txt")):
                _prune(out / sub / split, {s + ext for s in stems})  # (made if missing: an empty split)
            coco = {"info": {"description": f"cvapps synthetic shapes ({split})", "version": "1.0", "seed": seed},
                    "licenses": [], "images": images, "categories": cats, "annotations": anns}
            _atomic_write(out / "annotations" / f"{split}.json", json.dumps(coco).encode())
            for c, name in enumerate(CLASS_NAMES):
                folder, keep = out / "classify" / split / name, set()
                for i in range(n_crops_per_class[split_id]):
                    rng = np.random.default_rng([seed, 100 + split_id, c, i])
                    keep.add(f"{name}_{i:04d}.png")
                    _atomic_write(folder / f"{name}_{i:04d}.png", _encode(_crop(rng, c, crop_size), ".png"))
                    bar.update()
                _prune(folder, keep)
        # No "path:" key: ultralytics then resolves train/val against this file's folder, whereas
        # "path: ." would resolve against the current working directory.
        names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASS_NAMES))
        _atomic_write(out / "data.yaml", f"train: images/train\nval: images/val\nnames:\n{names}".encode())
        _write_video(out / "video", video_frames, tuple(video_size), fps, seed, bar)


def _write_video(folder: Path, frames: int, size: tuple[int, int], fps: int, seed: int, bar: tqdm) -> None:
    gt = _video(folder / "shapes.mp4", np.random.default_rng([seed, 200]), frames, size, fps, bar)
    _atomic_write(folder / "shapes.json", json.dumps(gt).encode())
    write_mot(folder / "gt.txt", [MotRow(g["frame"] + 1, tid, tuple(box), 1.0, cat, vis)  # type: ignore[arg-type]
                                  for g in gt for box, cat, tid, vis in
                                  zip(g["boxes"], g["category_ids"], g["track_ids"], g["visibility"])])


def _video_out(out: str | Path, frames: int, size: tuple[int, int], seed: int, *, min_side: int, what: str) -> Path:
    """``out`` as a Path once a generated video's arguments are checked (one-line errors)."""
    out = Path(out)
    if frames < 1 or min(size) < min_side:
        raise CvappsError(f"{what}: need frames >= 1 and video sides >= {min_side}")
    _check_args(seed, {"video width": size[0], "video height": size[1]}, {"video frames": frames})
    if out.exists() and not out.is_dir():
        raise CvappsError(f"{out}: exists and is not a directory")
    return out


def generate_video(out: str | Path, *, frames: int = 240, size: tuple[int, int] = (320, 240), fps: int = 24,
                   seed: int = 0, progress: bool = True) -> Path:
    """Only the moving-shapes video of :func:`generate_shapes` (the same one for the same seed):
    ``out/shapes.mp4``, ``out/shapes.json`` (per frame: boxes [x, y, w, h], category_ids, track_ids,
    visibility) and ``out/gt.txt`` (MOT Challenge ground truth: frame from 1, track id, box, 1,
    category id, visibility). Each shape keeps its track id for the whole video. Returns ``out``."""
    out = _video_out(out, frames, size, seed, min_side=32, what="generate_video")
    with output_root(out, ""), tqdm(total=frames, desc="video", unit="frame", disable=not progress) as bar:
        _write_video(out, frames, size, fps, seed, bar)
    return out
