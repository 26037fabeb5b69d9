"""The runtime: predictor batching/prefetch, the writer thread, sinks, shard, clean stops and memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from cvapps.engine.predict import PredictOptions, Predictor
from cvapps.engine.runner import run_source
from cvapps.errors import CvappsError
from cvapps.formats.coco import ImageIndex
from cvapps.io.sinks import (AnnotatedImages, CocoSink, JsonLinesSink, VideoWriterSink, count_video_frames,
                              make_drawer, prediction_to_json)
from cvapps.io.sources import SourceOptions, StreamSource, open_source, parse_shard
from cvapps.structures import Detections, Frame, Prediction
from cvapps.tasks.base import Task

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_VIDEO = ROOT / "sample_data" / "shapes" / "video" / "shapes.mp4"


# --------------------------------------------------------------------------------------------
# A small fake detector: one box per image around its brightest pixel, score = mean intensity.
# --------------------------------------------------------------------------------------------
class _FakeModel(nn.Module):
    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.delay = delay

    def forward(self, images: torch.Tensor, targets=None) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        return images.mean(dim=(1, 2, 3)) * self.scale  # (B,)


class _FakeDetectTask(Task):
    name = "fake"
    resize_mode = "letterbox"

    def postprocess(self, outputs, metas, **options):
        results = []
        for value, meta in zip(outputs.tolist(), metas):
            box = torch.tensor([[2.0, 3.0, 40.0, 30.0]])
            results.append(Prediction(Detections(box, torch.tensor([value]), torch.tensor([int(value * 10) % 3]))))
        return results


def fake_predictor(batch: int = 4, delay: float = 0.0, prefetch: int = 2) -> Predictor:
    return Predictor(_FakeDetectTask(), _FakeModel(delay), ["circle", "square", "triangle"],
                     {"imgsz": 32, "in_channels": 3}, PredictOptions(device="cpu", batch=batch, prefetch=prefetch))


class _Collect:
    def __init__(self, delay: float = 0.0) -> None:
        self.items: list[tuple[str, int]] = []
        self.closed = False
        self.delay = delay
        self.started_with = None

    def start(self, source) -> None:
        self.started_with = source

    def write(self, frame: Frame, prediction) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.items.append((frame.source, frame.index))

    def close(self) -> None:
        self.closed = True


def _write_video(path: Path, n: int, size=(64, 48), fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(n):
        img = np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8)
        cv2.putText(img, str(i), (2, size[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        writer.write(img)
    writer.release()
    return path


@pytest.fixture(scope="module")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_video(tmp_path_factory.mktemp("vid") / "clip.mp4", 30)


@pytest.fixture(scope="module")
def classify_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny classifier checkpoint (the runtime does not need accuracy)."""
    from cvapps.checkpoint import save_checkpoint
    from cvapps.tasks import load_config
    from cvapps.tasks import get_task

    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "classify_shapes.yaml", ["data.imgsz=32"])
    names = ["circle", "square", "triangle"]
    model = get_task("classify").build_model(cfg, names)
    path = tmp_path_factory.mktemp("ckpt") / "cls.pt"
    save_checkpoint(path, {"task": "classify", "config": cfg.model_dump(mode="json"), "class_names": names,
                           "preprocessing": {"imgsz": 32, "resize": "stretch", "in_channels": 3},
                           "model": model.state_dict()})
    return path


# --------------------------------------------------------------------------------------------
def test_order_batching_and_timings(small_video: Path) -> None:
    sink = _Collect()
    report = run_source(fake_predictor(batch=4), small_video, [sink], progress=False)
    assert [i for _, i in sink.items] == list(range(30))
    assert sink.closed and sink.started_with is not None and report.processed == 30
    assert set(report.timings) == {"read", "preprocess", "infer", "postprocess", "write"}
    assert all(v >= 0 for v in report.timings.values()) and report.timings["infer"] > 0
    assert "frames/s" in report.timing_report()


def test_prefetch_and_inline_agree(small_video: Path) -> None:
    out = []
    for prefetch in (0, 2):
        p = fake_predictor(batch=3, prefetch=prefetch)
        with open_source(small_video) as src:
            out.append([(f.index, round(float(d.detections.scores[0]), 6)) for f, d in p.predict(src)])
    assert out[0] == out[1] and len(out[0]) == 30


def test_writer_thread_overlaps_inference(small_video: Path) -> None:
    """20 ms of model time per frame and 20 ms of sink time per frame: serially that is >= 1.2 s
    for 30 frames; with the writer thread they overlap, so the run takes well under that."""
    sink = _Collect(delay=0.02)
    t0 = time.perf_counter()
    report = run_source(fake_predictor(batch=1, delay=0.02), small_video, [sink], progress=False)
    wall = time.perf_counter() - t0
    serial = 30 * (0.02 + 0.02)
    assert report.processed == 30
    assert wall < 0.85 * serial, f"no overlap: {wall:.2f} s vs {serial:.2f} s serial"


def test_shard_splits_without_overlap(small_video: Path, tmp_path: Path) -> None:
    seen = []
    for i in range(3):
        sink = _Collect()
        run_source(fake_predictor(), small_video, [sink], progress=False, source_options=SourceOptions(shard=f"{i}/3"))
        seen.append([idx for _, idx in sink.items])
    assert sorted(sum(seen, [])) == list(range(30))
    assert seen[1] == list(range(1, 30, 3))
    # folders: shard by file position, files of other shards are never opened
    for k in range(5):
        cv2.imwrite(str(tmp_path / f"{k}.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "3.png").write_bytes(b"broken")  # belongs to shard 1/2: must not be reported by 0/2
    sink = _Collect()
    report = run_source(fake_predictor(), tmp_path, [sink], progress=False, source_options=SourceOptions(shard=(0, 2)))
    assert [Path(s).name for s, _ in sink.items] == ["0.png", "2.png", "4.png"] and not report.skipped
    with pytest.raises(CvappsError, match="0-based"):
        parse_shard("3/3")
    with pytest.raises(CvappsError, match="I/N"):
        parse_shard("a")


def test_sink_error_propagates_and_all_sinks_close(small_video: Path) -> None:
    class Bad(_Collect):
        def write(self, frame, prediction):
            if frame.index == 5:
                raise CvappsError("disk full")

    good, bad = _Collect(), Bad()
    with pytest.raises(CvappsError, match="disk full"):
        run_source(fake_predictor(), small_video, [good, bad], progress=False)
    assert good.closed and bad.closed


def test_live_source_drops_are_reported() -> None:
    class Cap:
        def __init__(self):
            self.n = 0

        def isOpened(self):  # noqa: N802
            return True

        def read(self):
            self.n += 1
            if self.n > 40:
                return False, None
            time.sleep(0.002)
            return True, np.full((16, 16, 3), self.n, np.uint8)

        def grab(self):
            return True

        def get(self, prop):
            return 0.0

        def release(self):
            pass

    src = StreamSource("rtsp://cam", SourceOptions(reconnect_s=0.0), capture_factory=lambda url: Cap())
    sink = _Collect()
    report = run_source(fake_predictor(batch=1, delay=0.02), src, [sink], progress=False)
    assert report.processed == len(sink.items) > 0
    assert report.dropped > 0 and report.processed + report.dropped == 40


def test_annotated_outputs_of_sample_video(tmp_path: Path) -> None:
    """Acceptance: an annotated mp4 with the same frame count, fps and size as the input, and a
    COCO JSON with one image per frame that pycocotools loads."""
    from pycocotools.coco import COCO

    p = fake_predictor(batch=8)
    draw = make_drawer(p.class_names)
    video = VideoWriterSink(tmp_path / "shapes.mp4", draw)
    coco = CocoSink(tmp_path / "coco.json", p.class_names)
    lines = JsonLinesSink(tmp_path / "pred.jsonl", p.class_names)
    report = run_source(p, SAMPLE_VIDEO, [video, coco, lines], progress=False)
    n = count_video_frames(SAMPLE_VIDEO)
    assert report.processed == n == 240
    assert count_video_frames(tmp_path / "shapes.mp4") == n
    src_cap, out_cap = cv2.VideoCapture(str(SAMPLE_VIDEO)), cv2.VideoCapture(str(tmp_path / "shapes.mp4"))
    for prop in (cv2.CAP_PROP_FPS, cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT):
        assert out_cap.get(prop) == pytest.approx(src_cap.get(prop))
    ok, first = out_cap.read()
    assert ok and first.shape == (240, 320, 3)
    gt = COCO(str(tmp_path / "coco.json"))
    assert len(gt.getImgIds()) == n and len(gt.getAnnIds()) == n
    names = [img["file_name"] for img in gt.loadImgs(gt.getImgIds())]
    assert names[0] == "shapes.mp4#frame=000000" and names[123] == "shapes.mp4#frame=000123"
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[1]))[0]
    assert ann["bbox"] == [2.0, 3.0, 38.0, 27.0] and 0 <= ann["score"] <= 1
    records = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(records) == n and records[7]["index"] == 7 and records[7]["prediction"]["boxes"] == [[2.0, 3.0, 40.0, 30.0]]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")], "temp files left behind"


def test_annotated_images_and_segmentation_json(tmp_path: Path) -> None:
    from cvapps.structures import Classification, SegmentationMask

    img_dir = tmp_path / "in" / "sub"
    img_dir.mkdir(parents=True)
    image = np.zeros((100, 120, 3), np.uint8)
    cv2.imwrite(str(img_dir / "a.png"), image)
    names = ["background", "circle", "square"]
    sink = AnnotatedImages(tmp_path / "out", make_drawer(names), root=tmp_path / "in")
    mask = np.zeros((100, 120), np.uint8)
    mask[52:58, 63:69] = 2
    mask[10:12, 10:12] = 255
    seg = Prediction(semantic=SegmentationMask(mask, np.array([0.9, 0.0, 0.8])))
    sink.write(Frame(image, str(img_dir / "a.png")), seg)
    written = cv2.imread(str(tmp_path / "out" / "sub" / "a.png"))
    assert written.shape == image.shape and written[55, 65].any() and not written[90, 110].any()
    classes = prediction_to_json(seg, names)["classes"]  # every value but background, each as RLE
    assert [(c["name"], c["pixels"], c["score"]) for c in classes] == [("square", 36, 0.800000011920929), ("ignore", 4, 1.0)]
    coco = CocoSink(tmp_path / "seg.json", names, [0, 1, 2], index=ImageIndex(tmp_path / "in"))
    coco.write(Frame(image, str(img_dir / "a.png")), seg)
    coco.write(Frame(image, str(img_dir / "b.png")), Prediction(classification=Classification(1, 0.7, [(1, 0.7)])))
    coco.close()
    data = json.loads((tmp_path / "seg.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["circle", "square"]
    assert [i["file_name"] for i in data["images"]] == ["sub/a.png", "sub/b.png"]
    (ann,) = data["annotations"]
    assert ann["category_id"] == 2 and ann["area"] == 36 and ann["bbox"] == [63, 52, 6, 6] and ann["score"] == 0.8


def test_classify_cli_with_video_outputs(classify_ckpt: Path, small_video: Path, tmp_path: Path) -> None:
    from cvapps.cli import main

    rc = main(["classify", str(small_video), "--model", str(classify_ckpt), "--out", str(tmp_path),
               "--save-video", "--save-jsonl", "--quiet", "--batch", "4", "--shard", "1/2"])
    assert rc == 0
    assert count_video_frames(tmp_path / "clip.mp4") == 15
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 15
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 16


def test_show_without_display_is_a_clear_error(classify_ckpt: Path, small_video: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from cvapps.cli import main

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc = main(["classify", str(small_video), "--model", str(classify_ckpt), "--out", str(tmp_path), "--show"])
    assert rc == 1 and "--show needs a display" in capsys.readouterr().err


def test_sigterm_leaves_valid_outputs(classify_ckpt: Path, tmp_path: Path) -> None:
    """SIGTERM to a running `cvapps classify` on a long video: it stops reading, flushes, and every
    output is complete and consistent (mp4 playable with as many frames as JSON lines and CSV rows)."""
    video = _write_video(tmp_path / "long.mp4", 3000, size=(96, 64), fps=25)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cvapps", "classify", str(video), "--model", str(classify_ckpt),
                             "--out", str(out), "--save-video", "--save-jsonl", "--quiet", "--batch", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            tmp = [f for f in out.glob(".predictions.jsonl.*.tmp")] if out.exists() else []
            if tmp and tmp[0].stat().st_size > 2000:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "finished before it could be interrupted: " + proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped early by SIGTERM" in stdout
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert all(json.loads(line)["prediction"]["name"] for line in lines)
    n = len(lines)
    assert 0 < n < 3000
    assert count_video_frames(out / "long.mp4") == n
    assert len((out / "predictions.csv").read_text().splitlines()) == n + 1
    assert not list(out.glob(".*")), "temp files left behind"


def test_folder_source_memory_stays_flat(tmp_path: Path) -> None:
    """The folder walk streams: peak Python memory while predicting 2,000 files is about that of
    200 files (a listing of every path would grow it by the number of files)."""
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = png.tobytes()

    def make(root: Path, dirs: int, per_dir: int) -> Path:
        for d in range(dirs):
            sub = root / f"d{d:03d}"
            sub.mkdir(parents=True)
            for k in range(per_dir):
                (sub / f"image_with_a_long_name_{k:05d}.png").write_bytes(data)
        return root

    class Count:
        n = 0

        def write(self, frame, prediction):
            self.n += 1

        def close(self):
            pass

    peaks = []
    for dirs in (10, 100):
        root = make(tmp_path / f"r{dirs}", dirs, 20)
        sink = Count()
        tracemalloc.start()
        run_source(fake_predictor(batch=8), root, [sink], progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert sink.n == dirs * 20
    assert peaks[1] - peaks[0] < 300_000, f"peak memory grew with the number of files: {peaks}"


class _ShapeTask(_FakeDetectTask):
    """Postprocess reports each image's network-input shape (to see the rect sub-batches)."""

    def postprocess(self, outputs, metas, **_):
        return [meta.input_hw for meta in metas]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_mixed_shapes_run_as_rect_sub_batches_in_input_order(prefetch: int) -> None:
    from cvapps.structures import Frame

    predictor = Predictor(_ShapeTask(), _FakeModel(), ["a"], {"imgsz": 128, "in_channels": 3},
                          PredictOptions(device="cpu", batch=8, prefetch=prefetch))
    sizes = [(60, 128), (128, 60), (60, 128), (30, 128), (128, 128)]  # (h, w): landscape, portrait, ...
    frames = [Frame(np.zeros((h, w, 3), np.uint8), f"img{i}", i) for i, (h, w) in enumerate(sizes)]
    out = list(predictor.predict(frames))
    assert [f.source for f, _ in out] == [f"img{i}" for i in range(len(sizes))]
    # Each image keeps its own rect input (multiple of 32), not a batch-wide square.
    assert [hw for _, hw in out] == [_rect(h, w) for h, w in sizes]
    assert [_rect(h, w) for h, w in sizes] == [(64, 128), (128, 64), (64, 128), (32, 128), (128, 128)]


def _rect(h: int, w: int, imgsz: int = 128, stride: int = 32) -> tuple[int, int]:
    scale = imgsz / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return -(-nh // stride) * stride, -(-nw // stride) * stride


# --------------------------------------------------------------------------------------------
# Memory layout: one rule per task (measured per model family), fixed for the predictor's life.
# --------------------------------------------------------------------------------------------
class _LayoutModel(nn.Module):
    """A 1x1 conv that records whether each input came in channels_last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.seen: list[bool] = []

    def forward(self, images: torch.Tensor, targets=None) -> torch.Tensor:
        self.seen.append(images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous())
        return self.conv(images).mean(dim=(1, 2, 3))


@pytest.mark.parametrize("channels_last", [True, False])
def test_memory_format_is_the_tasks_rule_for_every_batch(channels_last: bool) -> None:
    task = _FakeDetectTask()
    task.cpu_channels_last = channels_last
    model = _LayoutModel()
    predictor = Predictor(task, model, ["a", "b", "c"], {"imgsz": 32}, PredictOptions(device="cpu", batch=2, prefetch=0))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert predictor.memory_format == fmt
    run = predictor.model  # the inference form: a copy (its convolution packed on the CPU)
    assert run.conv.weight.is_contiguous(memory_format=fmt)  # the model is converted once
    frames = [Frame(np.full((20, 30, 3), i, np.uint8), f"f{i}", i) for i in range(5)]
    assert len(list(predictor.predict(frames))) == 5
    assert run.seen == [channels_last] * 3  # 3 batches (2, 2, 1 frames), no probe pass
    assert model.seen == [], "the model handed in is not the one run"


def test_memory_format_of_training_models_and_models_without_convolutions() -> None:
    task = _FakeDetectTask()
    task.cpu_channels_last = True
    training = _LayoutModel()
    predictor = Predictor(task, training, ["a", "b", "c"], {"imgsz": 32},
                          PredictOptions(device="cpu", channels_last=False, fuse=False, prefetch=0))
    predictor(np.zeros((20, 20, 3), np.uint8))
    assert predictor.memory_format == torch.contiguous_format and training.seen == [False]
    from cvapps.engine.device import choose_memory_format

    assert choose_memory_format(nn.Linear(3, 1), torch.device("cpu"), True) == torch.contiguous_format


def test_inline_sinks_are_written_on_the_callers_thread(small_video: Path) -> None:
    """Only in-memory sinks (inline = True) or none: no writer thread; any other sink: the writer thread."""
    import threading

    class _Where:
        def __init__(self, inline: bool) -> None:
            self.inline, self.threads = inline, set()

        def write(self, frame, prediction) -> None:
            self.threads.add(threading.current_thread().name)

        def close(self) -> None:
            pass

    inline = _Where(True)
    report = run_source(fake_predictor(), small_video, [inline], progress=False, handle_signals=False)
    assert report.processed == 30 and inline.threads == {threading.current_thread().name}
    threaded = _Where(False)
    run_source(fake_predictor(), small_video, [_Where(True), threaded], progress=False, handle_signals=False)
    assert threaded.threads == {"cvapps-writer"}
    assert run_source(fake_predictor(), small_video, [], progress=False, handle_signals=False).processed == 30
