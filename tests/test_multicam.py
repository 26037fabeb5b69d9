"""Many cameras through one batched model (issue 14): streams files, interleaving, gaps, reconnects.

The first tests use fake captures (no network, no model); the acceptance test serves three real
MPEG-TS streams with ffmpeg on 127.0.0.1, kills one and restarts it mid-run, and checks that the
``cvapps detect streams.txt`` run batched frames of several cameras into each forward pass, recorded
the outage as a gap event (no frames invented for it), reconnected, and left valid outputs. Every
wait is bounded; the servers and the run are always stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tiny_checkpoints import ROOT, SHAPES, make_checkpoint

import cvapps.api
from cvapps.cli import main as cli
from cvapps.errors import CvappsError
from cvapps.io.sinks import JsonLinesSink
from cvapps.io.sources import MultiSource, SourceOptions, is_streams_file, read_streams_file
from cvapps.structures import Detections, Prediction

SAMPLE_VIDEO = ROOT / "sample_data" / "shapes" / "video" / "shapes.mp4"
WAIT_S = 40.0  # a hang guard for each step of the acceptance test, never reached when things work


# -- streams files --------------------------------------------------------------------------------
def test_streams_file_is_told_from_an_image_list(tmp_path: Path) -> None:
    streams = tmp_path / "cams.txt"
    streams.write_text("# lobby cameras\nrtsp://user:secret@10.0.0.5:554/live  gate north\n\n"
                       "http://10.0.0.6/cam.ts\n0\nudp://10.0.0.7:5000 gate/north\n")
    assert is_streams_file(streams) and is_streams_file(str(streams))
    specs = read_streams_file(streams)
    assert [s.target for s in specs] == ["rtsp://user:secret@10.0.0.5:554/live", "http://10.0.0.6/cam.ts", 0,
                                         "udp://10.0.0.7:5000"]
    assert [s.name for s in specs] == ["gate north", "http://10.0.0.6/cam.ts", "webcam0", "gate/north"]
    # output stems: file-name safe, unique, never a password
    assert [s.stem for s in specs] == ["gate_north", "10.0.0.6_cam.ts", "webcam0", "gate_north_2"]
    unnamed = tmp_path / "unnamed.txt"
    unnamed.write_text("rtsp://user:secret@10.0.0.5:554/live\n")
    (spec,) = read_streams_file(unnamed)
    assert spec.name == "rtsp://user:***@10.0.0.5:554/live" and spec.stem == "10.0.0.5_554_live"

    images = tmp_path / "images.txt"
    images.write_text("a.jpg\nsub/b.png\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert not is_streams_file(images) and not is_streams_file(empty) and not is_streams_file(tmp_path / "nope.txt")
    # one URL makes it a streams file; the line that is not a stream is then an error naming it
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("a.jpg\nrtsp://cam/live\n")
    assert is_streams_file(mixed)
    with pytest.raises(CvappsError, match="mixed.txt:1"):
        read_streams_file(mixed)
    twice = tmp_path / "twice.txt"
    twice.write_text("rtsp://cam/live\nrtsp://cam/live\n")
    with pytest.raises(CvappsError, match="listed twice"):
        read_streams_file(twice)


# -- fake captures ---------------------------------------------------------------------------------
class FakeCapture:
    """A capture that yields ``frames`` frames (None: forever), one per ``delay`` s, then fails reads;
    ``opened=False`` never opens; ``hang`` makes every read block until the event is set."""

    def __init__(self, frames: int | None = None, delay: float = 0.01, opened: bool = True,
                 hang: threading.Event | None = None) -> None:
        self.frames, self.delay, self.opened, self.hang = frames, delay, opened, hang
        self.count = 0

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's spelling
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.hang is not None:
            self.hang.wait(30)
            return False, None
        time.sleep(self.delay)
        if self.frames is not None and self.count >= self.frames:
            return False, None
        self.count += 1
        return True, np.full((24, 32, 3), self.count % 256, np.uint8)

    def grab(self) -> bool:
        return self.read()[0]

    def get(self, prop_id: int) -> float:
        return 0.0

    def release(self) -> None:
        pass


def _factory(plans: dict[str, list]):
    """capture_factory: each target gets its planned captures in turn (the last one repeats)."""
    def make(target: str) -> FakeCapture:
        plan = plans[target]
        return plan.pop(0)() if len(plan) > 1 else plan[0]()
    return make


def _streams(tmp_path: Path, *urls: str) -> list:
    path = tmp_path / "streams.txt"
    path.write_text("".join(f"{u}\n" for u in urls))
    return read_streams_file(path)


def test_dead_or_hanging_camera_never_stalls_the_others(tmp_path: Path) -> None:
    hang = threading.Event()
    plans = {"fake://live": [FakeCapture], "fake://hang": [lambda: FakeCapture(hang=hang)],
             "fake://dead": [lambda: FakeCapture(opened=False)]}
    src = MultiSource(_streams(tmp_path, "fake://live", "fake://hang", "fake://dead"), SourceOptions(reconnect_s=1.0),
                      capture_factory=_factory(plans))
    names = []
    try:
        for frame in src:
            names.append(src.stream_of(frame))
            if len(names) == 40:
                break
        # the dead camera has given up (about reconnect_s), the live one still goes on
        deadline = time.monotonic() + WAIT_S
        while not src.skipped and time.monotonic() < deadline:
            time.sleep(0.05)
        for frame in src:
            names.append(src.stream_of(frame))
            if len(names) == 60:
                break
    finally:
        src.close()  # does not wait for the hanging read (about 1 s), which ends below
        hang.set()
    assert Counter(names) == {"fake://live": 60}
    assert [name for name, _ in src.skipped] == ["fake://dead"] and "cannot open" in src.skipped[0][1]


def test_an_outage_is_a_gap_event_and_no_frames(tmp_path: Path) -> None:
    """Camera b delivers 10 frames, drops, is refused once, then comes back: one gap event, no frames
    of b inside it, frames of a all through it; the JSON lines put the gap before b's next frame."""
    plans = {"fake://a": [FakeCapture],
             "fake://b": [lambda: FakeCapture(frames=10), lambda: FakeCapture(opened=False), FakeCapture]}
    src = MultiSource(_streams(tmp_path, "fake://a", "fake://b"), SourceOptions(reconnect_s=10.0, buffer=True),
                      capture_factory=_factory(plans))
    sink = JsonLinesSink(tmp_path / "p.jsonl", SHAPES)
    sink.start(src)
    b_frames = 0
    with src:
        for frame in src:
            sink.write(frame, Prediction(Detections.empty()))
            b_frames += src.stream_of(frame) == "fake://b"
            if b_frames == 20:
                break
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    (gap,) = [x for x in lines if x.get("event") == "gap"]
    assert gap["source"] == "fake://b" and gap["reconnected"] is True and gap["from"] < gap["to"]
    assert gap["from_utc"] < gap["to_utc"]
    frames = [x for x in lines if "event" not in x]
    b_times = [x["timestamp"] for x in frames if x["stream"] == "fake://b"]
    assert len(b_times) == 20 and not [t for t in b_times if gap["from"] + 1e-3 < t < gap["to"] - 1e-3]
    assert [t for t in (x["timestamp"] for x in frames if x["stream"] == "fake://a") if gap["from"] < t < gap["to"]]
    at = lines.index(gap)
    before = [x["timestamp"] for x in lines[:at] if x.get("stream") == "fake://b"]
    after = [x["timestamp"] for x in lines[at + 1:] if x.get("stream") == "fake://b"]
    assert len(before) == 10 and max(before) <= gap["from"] + 1e-3
    assert len(after) == 10 and min(after) >= gap["to"] - 1e-3


# -- acceptance: three ffmpeg streams, one killed and restarted ------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FfmpegServer:
    """``ffmpeg`` serving the sample video in a loop, in real time, as MPEG-TS on 127.0.0.1:port
    (one client; it exits when that client goes)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "quiet", "-re", "-stream_loop", "-1", "-i", str(SAMPLE_VIDEO),
             "-an", "-c:v", "mpeg1video", "-q:v", "5", "-f", "mpegts", f"{self.url}?listen=1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary")
def test_three_streams_one_killed_and_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    av = pytest.importorskip("av")
    ckpt = make_checkpoint(tmp_path / "yolo.pt", "yolo_shapes.yaml", ["data.imgsz=64"], SHAPES, [1, 2, 3])
    servers = [FfmpegServer(_free_port()) for _ in range(3)]
    victim = servers[1].url
    streams = tmp_path / "streams.txt"
    streams.write_text("".join(f"{s.url}\n" for s in servers))
    out = tmp_path / "out"

    batch_sizes: list[int] = []  # one entry per forward pass, in order
    seen: list[str] = []  # the stream of every predicted frame, in order
    steps: list[str] = []
    real_load = cvapps.api.load

    def wait_for(cond, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; seen {Counter(seen)}")
            time.sleep(0.05)

    def orchestrate(source: MultiSource) -> None:
        """Kill the middle stream once all three flow; restart it once the others went on without
        it; stop the run once it is back."""
        try:
            wait_for(lambda: len(set(seen)) == 3, "frames of all three streams")
            # the three opened at once and file descriptor 2 is still where it was
            steps.append("stderr kept" if os.fstat(2).st_ino == stderr_inode else "stderr lost")
            servers[1].stop()
            steps.append("killed")
            n_kill = Counter(seen)
            wait_for(lambda: all(Counter(seen)[s.url] >= n_kill[s.url] + 24 for s in (servers[0], servers[2])),
                     "the other two streams to go on")
            servers[1].start()
            steps.append("restarted")
            n_restart = Counter(seen)[victim]
            wait_for(lambda: Counter(seen)[victim] >= n_restart + 10, "the restarted stream")
            steps.append("back")
        except AssertionError as exc:
            steps.append(str(exc))
        finally:
            source.request_stop()  # what Ctrl-C does: stop reading, flush, close every output

    def spy_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        predictor = model.predictor
        predictor.model.register_forward_pre_hook(lambda _m, inputs: batch_sizes.append(int(inputs[0].shape[0])))
        real_predict = predictor.predict

        def predict(frames, **options):
            threading.Thread(target=orchestrate, args=(frames,), daemon=True).start()
            for frame, prediction in real_predict(frames, **options):
                seen.append(frames.stream_of(frame))
                yield frame, prediction

        predictor.predict = predict
        return model

    monkeypatch.setattr(cvapps.api, "load", spy_load)
    stderr_inode = os.fstat(2).st_ino
    # If the orchestration never starts (the spy missed the predictor), Ctrl-C the run instead of hanging.
    guard = threading.Timer(4 * WAIT_S, lambda: os.kill(os.getpid(), signal.SIGINT))
    guard.start()
    try:
        code = cli(["detect", str(streams), "--model", str(ckpt), "--out", str(out), "--device", "cpu",
                    "--batch", "3", "--reconnect", "20"])
    finally:
        guard.cancel()
        for server in servers:
            server.stop()
    assert steps == ["stderr kept", "killed", "restarted", "back"], steps
    assert code == 0
    # file descriptor 2 still leads to stderr at the end (the timing report is there)
    out_text, err_text = capfd.readouterr()
    assert "frames in" in err_text and f"wrote {out / 'predictions.jsonl'}" in out_text

    # one forward pass per batch, batches mixing cameras
    assert sum(batch_sizes) == len(seen) and len(batch_sizes) < len(seen)
    chunks, pos = [], 0
    for size in batch_sizes:
        chunks.append(set(seen[pos:pos + size]))
        pos += size
    mixed = [c for c in chunks if len(c) > 1]
    assert len(mixed) >= len(chunks) // 2, (len(mixed), len(chunks))

    # outputs: a video per stream and the JSON lines, no per-frame images, no temp files
    stems = {s.url: f"127.0.0.1_{s.port}" for s in servers}
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{v}.mp4" for v in stems.values()), "predictions.jsonl"])
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    frames = [x for x in lines if "event" not in x]
    gaps = [x for x in lines if x.get("event") == "gap"]
    assert Counter(x["stream"] for x in frames) == Counter(seen)
    victim_gaps = [g for g in gaps if g["source"] == victim]
    assert len(victim_gaps) == 1 and victim_gaps[0]["reconnected"] is True, gaps
    gap = victim_gaps[0]
    victim_times = [x["timestamp"] for x in frames if x["stream"] == victim]
    assert [t for t in victim_times if t <= gap["from"] + 1e-3] and [t for t in victim_times if t >= gap["to"] - 1e-3]
    assert not [t for t in victim_times if gap["from"] + 1e-3 < t < gap["to"] - 1e-3]  # nothing invented
    for other in (servers[0].url, servers[2].url):  # the others were read all through the outage
        assert [x for x in frames if x["stream"] == other and gap["from"] < x["timestamp"] < gap["to"]]
    for url, stem in stems.items():
        with av.open(str(out / f"{stem}.mp4")) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 320, 240)
            assert sum(1 for _ in container.decode(video=0)) == Counter(seen)[url]
