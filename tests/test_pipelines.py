"""Pipelines, network streams and the live web preview.

Needs the ``ffmpeg`` binary for the stream test and ``chromium`` for the screenshot test (Debian
packages ``ffmpeg`` and ``chromium``); each test skips with the reason when its binary is missing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

import cvapps
from cvapps.engine.load import LoadedModel
from cvapps.engine.predict import PredictOptions, Predictor
from cvapps.engine.runner import run_source
from cvapps.io.preview import MJPEGServer, parse_host_port
from cvapps.io.sinks import JsonLinesSink, VideoWriterSink, count_video_frames, make_drawer
from cvapps.io.sources import SourceOptions
from cvapps.structures import Prediction, SegmentationMask
from cvapps.tasks.base import Task
from test_runner import ROOT, SAMPLE_VIDEO, _FakeModel, _write_video, classify_ckpt, fake_predictor  # noqa: F401

PIPELINES = ROOT / "pipelines"


def load_pipeline(name: str):
    sys.path.insert(0, str(PIPELINES))
    try:
        spec = importlib.util.spec_from_file_location(f"pipeline_{name}", PIPELINES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(PIPELINES))


class _FakeSegmentTask(Task):
    name = "segment"

    def postprocess(self, outputs, metas, **options):
        out = []
        for meta in metas:
            h, w = meta.orig_hw
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4: h // 2, w // 4: w // 2] = 1
            out.append(Prediction(semantic=SegmentationMask(mask, np.array([0.5, 0.9]))))
        return out


def fake_segmenter() -> Predictor:
    return Predictor(_FakeSegmentTask(), _FakeModel(), ["background", "blob"], {"imgsz": 32},
                     PredictOptions(device="cpu", batch=4), category_ids=[0, 7])


def as_model(predictor: Predictor) -> cvapps.Model:
    """A :class:`cvapps.Model` around a test predictor's task, network and class names (what the pipelines take)."""
    return cvapps.Model(LoadedModel(predictor.task, predictor.model, predictor.class_names, predictor.category_ids,
                                    {"imgsz": predictor.imgsz, "in_channels": predictor.in_channels}, "fake",
                                    device="cpu", batch=predictor.batch))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
def test_pipeline_scripts_have_help() -> None:
    for name in ("detect_then_classify", "annotate_video", "webcam", "auto_label"):
        res = subprocess.run([sys.executable, str(PIPELINES / f"{name}.py"), "--help"], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0 and "usage:" in res.stdout, (name, res.stderr)


def test_annotate_video_detection_and_segmentation(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    video = _write_video(tmp_path / "clip.mp4", 20, size=(80, 60))
    mod = load_pipeline("annotate_video")
    report = mod.annotate(video, tmp_path / "out", as_model(fake_predictor()), as_model(fake_segmenter()),
                          settings=mod.AnnotateSettings(progress=False))
    assert report.processed == 20
    assert count_video_frames(tmp_path / "out" / "clip.mp4") == 20
    det = COCO(str(tmp_path / "out" / "detections_coco.json"))
    seg = COCO(str(tmp_path / "out" / "segmentation_coco.json"))
    assert len(det.getImgIds()) == len(seg.getImgIds()) == 20
    assert seg.loadCats(seg.getCatIds()) == [{"id": 7, "name": "blob", "supercategory": ""}]
    ann = seg.loadAnns(seg.getAnnIds(imgIds=[3]))[0]
    assert ann["area"] == 15 * 20 and seg.annToMask(ann).sum() == 300


def test_auto_label_folder(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    folder = ROOT / "sample_data" / "shapes" / "images" / "val"
    mod = load_pipeline("auto_label")
    report = mod.auto_label(as_model(fake_predictor()), folder, tmp_path / "auto.json", conf=0.0, progress=False)
    coco = COCO(str(tmp_path / "auto.json"))
    files = sorted(p.name for p in folder.glob("*.jpg"))
    assert report.processed == len(files) == len(coco.getImgIds())
    assert sorted(i["file_name"] for i in coco.loadImgs(coco.getImgIds())) == files
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle"]


def test_detect_then_classify(tmp_path: Path, classify_ckpt: Path) -> None:
    mod = load_pipeline("detect_then_classify")
    classifier = cvapps.load(classify_ckpt, device="cpu")
    video = _write_video(tmp_path / "clip.mp4", 12, size=(80, 60))
    report, sink = mod.detect_then_classify(as_model(fake_predictor()), classifier, video, tmp_path / "out",
                                            mod.CropSettings(save_video=True, progress=False))
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert report.processed == len(records) == 12 and sink.objects == 12
    obj = records[0]["objects"][0]
    assert obj["box"] == [2.0, 3.0, 40.0, 30.0] and obj["classifier"]["name"] in classifier.names
    assert count_video_frames(tmp_path / "out" / "clip.mp4") == 12
    crop = mod.crop_boxes(np.zeros((60, 80, 3), np.uint8), [[2, 3, 40, 30]], pad=0.1)[0]
    assert crop.shape == (33, 44, 3)  # grown by 10 % (2.7 px, 3.8 px) each side, clipped at 0


def test_pipeline_refuses_a_model_of_another_kind(tmp_path: Path, classify_ckpt: Path, capsys) -> None:
    mod = load_pipeline("auto_label")
    folder = ROOT / "sample_data" / "shapes" / "images" / "val"
    assert mod.main([str(folder), "--model", str(classify_ckpt), "--out", str(tmp_path / "a.json"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a 'classify' model; this needs a detector" in err
    assert not (tmp_path / "a.json").exists()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg binary not installed (apt-get install ffmpeg)")
def test_http_stream_from_ffmpeg_then_server_killed(tmp_path: Path) -> None:
    """A stream served by ffmpeg on 127.0.0.1 is processed; killing the server mid-way ends the run
    cleanly (after the reconnect window) with valid outputs."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1",
                               "-i", str(SAMPLE_VIDEO), "-c:v", "mpeg2video", "-q:v", "5", "-f", "mpegts",
                               "-listen", "1", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        p = fake_predictor(batch=1)
        draw = make_drawer(p.class_names)
        video = VideoWriterSink(tmp_path / "stream.mp4", draw)
        lines = JsonLinesSink(tmp_path / "stream.jsonl", p.class_names)

        def kill_later() -> None:
            deadline = time.monotonic() + 30
            while lines.lines < 30 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.kill()

        killer = threading.Thread(target=kill_later, daemon=True)
        killer.start()
        # reconnect_s also sets FFmpeg's read timeout: 5 s keeps a busy CI machine from ending the
        # stream early; after the kill the run ends within that window by itself
        report = run_source(p, url, [video, lines], progress=False,
                            source_options=SourceOptions(reconnect_s=5, buffer=True))
        killer.join()
    finally:
        server.kill()
        server.wait()
    assert report.processed >= 30, report.summary()
    records = [json.loads(line) for line in (tmp_path / "stream.jsonl").read_text().splitlines()]
    n = len([r for r in records if "event" not in r])
    assert n == report.processed
    # the outage that ended the run is a gap event (the stream never came back), not frames
    assert [r["reconnected"] for r in records if r.get("event") == "gap"] == [False]
    assert count_video_frames(tmp_path / "stream.mp4") == n
    cap = cv2.VideoCapture(str(tmp_path / "stream.mp4"))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (320, 240)


def _read_one_jpeg(url: str, timeout: float = 20.0) -> np.ndarray:
    """Read ``/stream.mjpg`` until one whole JPEG part has arrived and decode it."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        buf = b""
        while True:
            chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(4096)
            assert chunk, "stream ended before a frame"
            buf += chunk
            start = buf.find(b"\xff\xd8")
            end = buf.find(b"\xff\xd9", start + 2)
            if start >= 0 and end > 0:
                image = cv2.imdecode(np.frombuffer(buf[start:end + 2], np.uint8), cv2.IMREAD_COLOR)
                assert image is not None
                return image


def _slow_run(server: MJPEGServer, frames: int = 200):
    """Run the fake detector over the sample video, slowly enough to watch, into the server."""
    p = fake_predictor(batch=1, delay=0.02)
    result = {}

    def target() -> None:
        result["report"] = run_source(p, SAMPLE_VIDEO, [server], progress=False, handle_signals=False)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def test_serve_page_stream_and_stats() -> None:
    assert parse_host_port("8080") == ("127.0.0.1", 8080)
    assert parse_host_port("0.0.0.0:81") == ("0.0.0.0", 81)
    p = fake_predictor()
    server = MJPEGServer("127.0.0.1:0", make_drawer(p.class_names))
    thread, result = _slow_run(server)
    try:
        page = urllib.request.urlopen(server.url, timeout=10).read().decode()
        assert "/stream.mjpg" in page and "/stats.json" in page
        image = _read_one_jpeg(server.url + "stream.mjpg")
        assert image.shape == (240, 320, 3)
        deadline = time.monotonic() + 30
        while True:  # fps needs two frames; the machine may be busy
            stats = json.loads(urllib.request.urlopen(server.url + "stats.json", timeout=10).read())
            if stats["frames"] >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert stats["frames"] >= 2 and stats["fps"] > 0 and stats["dropped"] == 0, stats
    finally:
        thread.join(timeout=60)
    assert result["report"].processed == 240
    with pytest.raises(OSError):  # closed with the run
        urllib.request.urlopen(server.url + "stats.json", timeout=2)


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="chromium not installed (apt-get install chromium)")
def test_serve_page_in_headless_chromium(tmp_path: Path) -> None:
    """The --serve page shows the annotated frames in a real browser: a headless screenshot of the
    page contains the video picture (not a blank page)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    p = fake_predictor()
    server = MJPEGServer("127.0.0.1:0", make_drawer(p.class_names))
    thread, _ = _slow_run(server)
    shot = tmp_path / "page.png"
    try:
        _read_one_jpeg(server.url + "stream.mjpg")  # frames are flowing
        res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                              "--window-size=400,380", "--virtual-time-budget=3000",
                              f"--screenshot={shot}", server.url],
                             capture_output=True, text=True, timeout=90)
    finally:
        thread.join(timeout=60)
    assert shot.exists(), res.stderr[-2000:]
    page = cv2.imread(str(shot))
    # The sample video is mid-grey background with coloured shapes; a blank page is one colour.
    region = page[60:300, 10:330]
    assert region.std() > 10, "no picture in the page"
