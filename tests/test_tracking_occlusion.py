"""Occlusion-robust tracking and counting: the occlusion video generator, cvapps' ocsort tracker
(re-update after a gap, appearance re-attachment), counting that survives id changes, backbone
embeddings, and ``cvapps track-eval``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cvapps.analytics import Counter, Tracker
from cvapps.analytics.embed import attach_embeddings
from cvapps.analytics.track_eval import evaluate_rows
from cvapps.data.synth_occlusion import DATASET_SEED_BASE, generate_occlusion_dataset, generate_occlusion_video
from cvapps.errors import CvappsError
from cvapps.formats.yolo import load_yolo_split
from cvapps.formats.mot import MotRow, read_mot, write_mot
from cvapps.structures import Detections, Frame

ROOT = Path(__file__).resolve().parents[1]
DETECTOR = ROOT / "sample_data" / "models" / "detect.pt"
IMAGE = np.zeros((240, 320, 3), np.uint8)


def _frame(i: int, name: str = "cam.mp4") -> Frame:
    return Frame.of_video(IMAGE, name, i, i / 25)


def _det(boxes: list[tuple[float, ...]], emb: list[list[float]] | None = None,
         ids: list[int] | None = None) -> Detections:
    data = {} if emb is None else {"embedding": np.asarray(emb, np.float32).reshape(len(boxes), -1)}
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.full((len(boxes),), 0.9),
                      torch.zeros(len(boxes), dtype=torch.int64), None,
                      None if ids is None else np.asarray(ids, np.int64), data)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_occlusion_video(tmp_path_factory.mktemp("occ") / "v", frames=120, seed=3, progress=False)


def test_occlusion_video_has_overlaps_exits_and_true_crossings(video: Path) -> None:
    rows = read_mot(video / "gt.txt")
    gt = json.loads((video / "shapes.json").read_text())
    crossings = json.loads((video / "crossings.json").read_text())
    assert len(gt) == 120 and len(rows) == sum(len(g["boxes"]) for g in gt)
    assert {r.id for r in rows} == {1, 2, 3, 4}
    assert min(r.visibility for r in rows) < 0.3  # shapes hide each other
    assert any(len(g["track_ids"]) < 4 for g in gt)  # and leave the frame
    assert all(0 <= r.box[0] and r.box[0] + r.box[2] <= 320.01 for r in rows)  # clipped to the frame
    assert crossings["line"] == [160.0, 0.0, 160.0, 240.0] and crossings["in"] + crossings["out"] >= 2
    assert len(crossings["events"]) == crossings["in"] + crossings["out"]
    again = generate_occlusion_video(video.parent / "again", frames=120, seed=3, progress=False)
    assert (again / "gt.txt").read_text() == (video / "gt.txt").read_text()  # same seed, same video


def test_occlusion_dataset_labels_the_visible_shapes_of_other_videos(tmp_path: Path) -> None:
    root = generate_occlusion_dataset(tmp_path / "ds", train=5, val=2, every=50, min_visibility=0.5, progress=False)
    train, val = sorted((root / "images" / "train").iterdir()), sorted((root / "images" / "val").iterdir())
    assert [p.name for p in train] == [f"occ_{DATASET_SEED_BASE}_{f:04d}.png" for f in range(0, 250, 50)]
    assert {p.name.split("_")[1] for p in val} == {str(DATASET_SEED_BASE + 1)}  # val: another video
    assert sorted(p.name for p in root.iterdir()) == ["data.yaml", "images", "labels"]  # the scratch video is gone
    # the labels are the video's ground truth: shapes at least half in view, boxes clipped to the frame
    video = generate_occlusion_video(tmp_path / "v", frames=101, seed=DATASET_SEED_BASE, progress=False)
    gt = json.loads((video / "shapes.json").read_text())[100]
    want = sorted((c - 1, *np.round(b, 1)) for b, c, v in zip(gt["boxes"], gt["category_ids"], gt["visibility"])
                  if v >= 0.5)
    rows = [line.split() for line in (root / "labels" / "train" / train[2].with_suffix(".txt").name).read_text().splitlines()]
    got = sorted((int(r[0]), *np.round([(float(r[1]) - float(r[3]) / 2) * 320, (float(r[2]) - float(r[4]) / 2) * 240,
                                        float(r[3]) * 320, float(r[4]) * 240], 1)) for r in rows)
    assert got == want and 0 < len(want) < len(gt["boxes"]) + 1
    split = load_yolo_split(root, "val")  # a dataset cvapps trains on as it is
    assert len(split.records) == 2 and split.class_names == ["circle", "square", "triangle"]
    with pytest.raises(CvappsError, match="train >= 1"):
        generate_occlusion_dataset(tmp_path / "bad", train=0, progress=False)


def _crossing(tracker: Tracker, with_embeddings: bool) -> list[list[int]]:
    """Two boxes meet and one hides the other for 5 frames (one merged box), then they separate."""
    red, blue = [1.0, 0.0], [0.0, 1.0]
    ids = []
    for i in range(30):
        a = (40 + 5 * i, 100, 80 + 5 * i, 140)  # going right
        b = (230 - 5 * i, 104, 270 - 5 * i, 144)  # going left
        hidden = 12 <= i < 17
        boxes, emb = ([a], [red]) if hidden else ([a, b], [red, blue])
        out = tracker.update(_frame(i), _det(boxes, emb if with_embeddings else None))
        ids.append([int(t) for t in out.track_ids])
    return ids


def test_ocsort_keeps_both_ids_through_an_occlusion() -> None:
    ids = _crossing(Tracker("ocsort"), with_embeddings=True)
    assert ids[0] == [1, 2] and ids[-1] == [1, 2]  # the hidden box got its id back
    assert {i for frame in ids for i in frame} == {1, 2}
    motion = _crossing(Tracker("ocsort"), with_embeddings=False)
    assert motion[-1][0] == 1  # the visible one keeps its id on motion alone


def test_counting_survives_an_id_change_and_logs_events() -> None:
    counter = Counter([(160.0, 0.0, 160.0, 240.0)], class_names=["shape"])
    for i in range(20):  # id 1 goes right, vanishes at the line, comes back on the other side as id 2
        x = 100 + 6 * i
        if 8 <= i < 12:
            counts = counter.update(_frame(i), _det([], ids=[]))
            continue
        counts = counter.update(_frame(i), _det([(x, 100, x + 30, 130)], ids=[1 if i < 8 else 2]))
    assert (counts.lines[0].in_count, counts.lines[0].out_count) == (1, 0)  # counted once, never twice
    events = counter.totals()["events"]
    assert [(e["track_id"], e["direction"], e["class"], e["frame"]) for e in events] == [(2, "in", "shape", 12)]
    assert events[0]["time"] == pytest.approx(12 / 25)


def test_backbone_embeddings_and_motion_only_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    import cvapps

    predictor = cvapps.load(DETECTOR, device="cpu").predictor
    assert attach_embeddings(predictor, quiet=True)
    pred = predictor(np.full((240, 320, 3), 90, np.uint8))
    image = np.full((240, 320, 3), 90, np.uint8)
    image[60:140, 80:160] = (0, 0, 255)
    pred = predictor(image, conf=0.01)
    emb = pred.detections.data["embedding"]
    assert emb.shape[0] == len(pred.detections) > 0 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)

    class Graph:  # an exported model: no nn.Module to tap
        task, model = predictor.task.task, object()
    assert not attach_embeddings(Graph())
    assert "motion only" in capsys.readouterr().err


def test_track_eval_scores_and_bad_input(tmp_path: Path, video: Path) -> None:
    gt = read_mot(video / "gt.txt")
    assert evaluate_rows(gt, gt).idf1 == pytest.approx(1.0)
    swapped = [MotRow(r.frame, (3 - r.id if r.id in (1, 2) and r.frame > 60 else r.id), r.box) for r in gt]
    scores = evaluate_rows(swapped, gt)
    assert scores.idf1 < 0.9 and scores.switches >= 2 and scores.hota is not None and scores.hota < 1
    path = write_mot(tmp_path / "pred.txt", swapped)
    proc = subprocess.run([sys.executable, "-m", "cvapps", "track-eval", str(path), str(video / "gt.txt"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["idf1"] == pytest.approx(scores.idf1, abs=1e-4)
    (tmp_path / "bad.txt").write_text("1,1,0\n")
    proc = subprocess.run([sys.executable, "-m", "cvapps", "track-eval", str(tmp_path / "bad.txt"), str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1 and "bad.txt:1" in proc.stderr


def test_cli_ocsort_counts_with_events(video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cvapps", "detect", str(video / "shapes.mp4"), "--model", str(DETECTOR),
           "--out", str(out), "--track", "ocsort", "--count-line", "160,0,160,240", "--quiet", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads((out / "counts.json").read_text())
    line = counts["lines"][0]
    assert len(counts["events"]) == line["in"] + line["out"] >= 1
    assert all(set(e) == {"source", "line", "track_id", "frame", "time", "direction", "class"} for e in counts["events"])
    tracks = read_mot(out / "tracks" / "shapes.txt")
    assert evaluate_rows(tracks, read_mot(video / "gt.txt"), 0.5).mota > 0.5


def test_ocsort_assignment_leaves_a_track_unmatched_rather_than_swap_two() -> None:
    from cvapps.analytics.ocsort import INF, _assign, _without_cut_boxes

    # track 0 fits box 0 well; track 1 (its object just reappearing) may only take box 0, poorly, and
    # is forbidden box 1: a full assignment would push track 0 onto box 1 (an id swap)
    cost = np.array([[0.04, 0.25], [0.30, INF]])
    assert _assign(cost, None) == [(0, 1), (1, 0)]
    assert _assign(cost, 0.5) == [(0, 0)]
    # a box cut by the frame border has no appearance (NaN): matched on motion, never re-attached by it
    emb = np.ones((3, 2)) / np.sqrt(2)
    boxes = np.array([[0.0, 50, 20, 90], [100, 50, 140, 90], [300, 50, 320, 90]])
    out = _without_cut_boxes(emb, boxes, (240, 320))
    assert np.isnan(out[[0, 2]]).all() and np.allclose(out[1], emb[1]) and not np.isnan(emb).any()


def test_ocsort_merged_box_does_not_steer_the_track_that_holds_it() -> None:
    """Two look-alike objects cross; for 10 frames the detector draws one box around both (standing
    still: the pair's average). The track holding it keeps its id on it, but the box must not update
    its motion: both tracks keep their own course (velocity sign) and come out of the merge unswapped."""
    tracker, same = Tracker("ocsort"), [[1.0, 0.0]] * 2
    for i in range(36):
        a = np.array([60 + 4 * i, 100, 110 + 4 * i, 150], float)  # going right
        b = np.array([220 - 4 * i, 108, 270 - 4 * i, 158], float)  # going left
        merged = 16 <= i < 26
        boxes = [tuple(np.r_[np.minimum(a, b)[:2], np.maximum(a, b)[2:]])] if merged else [tuple(a), tuple(b)]
        out = tracker.update(_frame(i), _det(boxes, same[:len(boxes)]))
        if i == 0:
            right_goer, left_goer = out.track_ids.tolist()
        if i in (15, 25):  # the last frame before the merge, the last merged frame: velocity kept
            tracks = {t.track_id: t for t in tracker.states["cam.mp4"].tracker.tracks}
            speeds = (tracks[right_goer].mean[4], tracks[left_goer].mean[4])
            before = speeds if i == 15 else before
    assert speeds[0] > 0.9 * before[0] > 3 and speeds[1] < 0.9 * before[1] < -3
    by_x = sorted(zip(out.boxes[:, 0].tolist(), out.track_ids.tolist()))
    assert [i for _, i in by_x] == [left_goer, right_goer]  # crossed over, ids kept


def test_batched_kalman_correction_and_agnostic_nms_equal_their_references() -> None:
    from torchvision.ops import batched_nms

    from cvapps import ultralytics_parts
    from cvapps.analytics.ocsort import multi_update
    from cvapps.nms import agnostic_nms

    kf, rng = ultralytics_parts.KalmanFilterXYAH(), np.random.default_rng(0)
    states = [kf.predict(*kf.initiate(np.array([50.0 + k, 60.0, 0.7, 40.0 + k]))) for k in range(5)]
    z = np.array([[52.0 + k, 61.0, 0.72, 41.0 + k] for k in range(5)]) + rng.normal(0, 1, (5, 4))
    means, covs = multi_update(kf, np.stack([m for m, _ in states]), np.stack([c for _, c in states]), z)
    for (m, c), zk, mk, ck in zip(states, z, means, covs):
        want_m, want_c = kf.update(m, c, zk)
        assert np.allclose(mk, want_m) and np.allclose(ck, want_c)
    xy = torch.rand(60, 2) * 200
    boxes, scores = torch.cat([xy, xy + 30], 1), torch.rand(60)
    same_class = torch.zeros(60, dtype=torch.long)
    assert torch.equal(agnostic_nms(boxes, scores, 0.5), batched_nms(boxes, scores, same_class, 0.5))
