"""Live streams against real HTTP servers on 127.0.0.1 (issues 11 and 17).

The servers are small Python socket servers (no ffmpeg binary needed): MPEG-TS bytes written by
OpenCV itself, a server that accepts and then says nothing, one that stalls mid-stream and one
that sends garbage. Every server binds 127.0.0.1 only and stops itself after a bounded time.
Each test is bounded by the code's own deadline (``reconnect_s``); a generous join timeout only
guards against a hang.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cvapps.analytics import Tracker
from cvapps.errors import CvappsError
from cvapps.io.sources import SourceOptions, StreamSource, open_source
from cvapps.io.sources.live import ffmpeg_complaint
from cvapps.structures import Detections

GUARD_S = 90.0  # a hang guard only: the code's own deadlines end each case within seconds


@pytest.fixture(scope="module")
def ts_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """30 frames, 64x48, MPEG-TS (the container of an ``http://.../cam.ts`` camera feed)."""
    path = tmp_path_factory.mktemp("ts") / "cam.ts"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MPEG-TS")
    for i in range(30):
        writer.write(np.full((48, 64, 3), 8 * i, np.uint8))
    writer.release()
    data = path.read_bytes()
    assert data[:1] == b"\x47"  # TS sync byte
    return data


class Server:
    """A one-thread HTTP-ish server on 127.0.0.1; ``mode`` decides what each connection gets:

    ``serve`` the body then close; ``frozen`` nothing at all; ``stall`` the first ``stall_at``
    bytes of the body, then nothing (and later connections nothing at all: the server hangs);
    ``garbage`` a 200 header and random bytes. Stops itself
    after ``life_s`` seconds (or on :meth:`stop`); :meth:`restart` reopens the same port.
    """

    def __init__(self, mode: str, body: bytes = b"", life_s: float = 30.0, stall_at: int = 0) -> None:
        self.mode, self.body, self.life_s, self.stall_at = mode, body, life_s, stall_at
        self.connections = 0
        self.port = 0
        self._start()

    def _start(self) -> None:
        self._stop = threading.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(8)
        sock.settimeout(0.1)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._loop, args=(sock,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _loop(self, sock: socket.socket) -> None:
        held: list[socket.socket] = []
        deadline = time.monotonic() + self.life_s
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    continue
                self.connections += 1
                held.append(conn)
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()
        finally:
            sock.close()
            for conn in held:  # a frozen peer is cut off when the server goes away
                try:
                    conn.close()
                except OSError:
                    pass

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5.0)
            conn.recv(4096)  # the request; its content does not matter
            if self.mode == "frozen" or (self.mode == "stall" and self.connections > 1):
                return  # accept and say nothing (held open until the server stops)
            header = b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n"
            if self.mode == "garbage":
                rng = np.random.default_rng(0)
                conn.sendall(header + rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
            elif self.mode == "stall":
                conn.sendall(header + self.body[: self.stall_at])
                return  # then nothing: the stream is frozen mid-way
            else:
                conn.sendall(header + self.body)
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        except OSError:
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def restart(self) -> None:
        self.stop()
        self._start()


def _bounded(fn, *args, **kwargs):
    """Run ``fn`` in a thread; return its result or raise its exception; fail if it hangs."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GUARD_S)
    assert not thread.is_alive(), f"{fn.__name__} did not return (hang)"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]


def _read_all(url: str, reconnect_s: float, on_frame=None) -> tuple[StreamSource, list[int]]:
    src = open_source(url, SourceOptions(buffer=True, reconnect_s=reconnect_s))
    levels = []
    with src:
        for frame in src:
            levels.append(int(frame.image.mean()))
            if on_frame is not None:
                on_frame(len(levels))
    return src, levels


def test_ts_url_is_a_stream_and_reconnects_after_server_restart(ts_bytes: bytes) -> None:
    server = Server("serve", ts_bytes, life_s=60)
    restarted = threading.Event()

    def restart_after_first_session(n: int) -> None:
        if n == 30 and not restarted.is_set():  # first session fully read: restart the server
            restarted.set()
            server.restart()
        elif n == 45:  # well into the second session: the server goes away for good
            server.stop()

    try:
        src, levels = _bounded(_read_all, f"{server.url}/cam.ts", 3.0, restart_after_first_session)
    finally:
        server.stop()
    assert isinstance(src, StreamSource) and src.is_live  # a .ts URL is not opened as a file
    assert restarted.is_set() and server.connections >= 2
    assert len(levels) > 30  # frames from after the restart too: it reconnected
    assert levels[0] < 8 and levels[30] < 8  # the clip was played again from its start


def test_frozen_server_gives_up_within_reconnect() -> None:
    server = Server("frozen", life_s=30)
    try:
        with pytest.raises(CvappsError) as info:
            _bounded(open_source, f"{server.url}/cam.ts", SourceOptions(reconnect_s=1.0))
    finally:
        server.stop()
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{server.port}/cam.ts" in message
    assert "timeout" in message  # FFmpeg's own open timeout fired, set from reconnect_s


def test_stalled_mp4_url_ends_within_reconnect(ts_bytes: bytes) -> None:
    """Issue 17: a stalled ``http://....mp4`` ends after about ``reconnect_s``, with what it read."""
    server = Server("stall", ts_bytes, life_s=30, stall_at=len(ts_bytes) // 2)
    try:
        src, levels = _bounded(_read_all, f"{server.url}/clip.mp4", 1.0)
    finally:
        server.stop()
    assert isinstance(src, StreamSource)
    assert 0 < len(levels) < 30  # the frames before the stall, then a clean end


def test_undecodable_stream_is_a_one_line_error() -> None:
    server = Server("garbage", life_s=30)
    try:
        with pytest.raises(CvappsError) as info:
            src = _bounded(open_source, f"{server.url}/cam.ts", SourceOptions(reconnect_s=1.0))
            with src:  # if FFmpeg accepted the bytes at open, no frame decodes from them
                _bounded(list, src)
    finally:
        server.stop()
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{server.port}/cam.ts" in message


def test_undecodable_stream_cli_exit_code(tmp_path: Path) -> None:
    from tiny_checkpoints import SHAPES, make_checkpoint

    ckpt = make_checkpoint(tmp_path / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    server = Server("garbage", life_s=60)
    try:
        proc = subprocess.run([sys.executable, "-m", "cvapps", "classify", f"{server.url}/cam.ts", "--model",
                               str(ckpt), "--out", str(tmp_path / "out"), "--reconnect", "1", "--device", "cpu"],
                              capture_output=True, text=True, timeout=GUARD_S)
    finally:
        server.stop()
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and f"{server.port}/cam.ts" in lines[0], proc.stderr
    print(lines[0])


def test_ffmpeg_complaint_parsing() -> None:
    text = ("[ WARN:0@2.3] global cap_ffmpeg_impl.hpp:453 _opencv_ffmpeg_interrupt_callback Stream timeout "
            "triggered after 2004.04 ms\n[http @ 0x55bd0e6eed40] Error reading HTTP response: Immediate exit requested\n")
    assert ffmpeg_complaint(text) == "no data for 2.0 s (timeout)"
    text = "[http @ 0x5600727] Stream ends prematurely at 102400, should be 1\n[ WARN:0@0.3] global cap.cpp:212 open\n"
    assert ffmpeg_complaint(text) == "http: Stream ends prematurely at 102400, should be 1"
    assert ffmpeg_complaint("") == ""


def test_quiet_stream_run_prints_nothing_on_stderr(ts_bytes: bytes, tmp_path: Path) -> None:
    """Issue 11: --quiet silences OpenCV/FFmpeg warnings (here: timeouts while reconnecting a
    stalled stream, printed by native code in the reader thread) and the progress bar; the same
    run without --quiet shows them, so the test can fail."""
    from tiny_checkpoints import SHAPES, make_checkpoint

    ckpt = make_checkpoint(tmp_path / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES)
    stderr = {}
    for quiet in (False, True):
        server = Server("stall", ts_bytes, life_s=60, stall_at=len(ts_bytes) // 2)
        try:
            proc = subprocess.run([sys.executable, "-m", "cvapps", "classify", f"{server.url}/cam.ts", "--model",
                                   str(ckpt), "--out", str(tmp_path / f"out{quiet}"), "--reconnect", "1",
                                   "--buffer", "--device", "cpu", *(["--quiet"] if quiet else [])],
                                  capture_output=True, text=True, timeout=GUARD_S)
        finally:
            server.stop()
        assert proc.returncode == 0, proc.stderr
        stderr[quiet] = proc.stderr
    assert "WARN" in stderr[False] or "timeout" in stderr[False]
    assert stderr[True] == ""


def _square_clip(path: Path, xs: range) -> bytes:
    """MPEG-TS, 96x64 black frames with one white 16x16 square at x = each of ``xs``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MPEG-TS")
    for x in xs:
        image = np.zeros((64, 96, 3), np.uint8)
        image[24:40, x:x + 16] = 255
        writer.write(image)
    writer.release()
    return path.read_bytes()


def _square_detection(image: np.ndarray) -> Detections:
    """The detector of these tests: a threshold, the white square's bounding box."""
    ys, xs = np.nonzero(image[..., 0] > 128)
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    return Detections(box, torch.tensor([0.9]), torch.zeros(1, dtype=torch.int64))


def _track_stream(url: str, buffer: str) -> tuple[list[int], list[dict], object]:
    """Read a live URL through a Tracker (the threshold detector)."""
    tracker, ids = Tracker("bytetrack", buffer), []
    src = open_source(url, SourceOptions(buffer=True, reconnect_s=3.0))
    with src:
        for frame in src:
            ids += tracker.update(frame, _square_detection(frame.image)).track_ids.tolist()
        gaps = src.take_events()
    return ids, gaps, tracker


@pytest.mark.parametrize("buffer, same_id", [("3s", True), ("0.05s", False)])
def test_track_ids_survive_a_real_stream_reconnect(tmp_path: Path, buffer: str, same_id: bool) -> None:
    """Issue 28: the camera's server goes away after the first clip and comes back with the next one
    (the square moving on); the stream reconnects (a real new connection, a gap event) and the track
    keeps its id when the outage is shorter than the track buffer, and not when it is longer."""
    first, second = _square_clip(tmp_path / "a.ts", range(10, 40)), _square_clip(tmp_path / "b.ts", range(40, 70))
    server = Server("serve", first, life_s=60)
    served = threading.Event()

    def outage_then_continuation() -> None:
        while server.connections < 1:
            time.sleep(0.01)
        time.sleep(0.2)  # the first clip is sent; the server goes away (connections refused) ...
        server.stop()
        time.sleep(0.4)
        server.body = second  # ... and comes back on the same port with the continuation
        server.restart()
        while server.connections < 2:
            time.sleep(0.01)
        time.sleep(0.2)
        server.stop()  # then gone for good: the stream ends after reconnect_s
        served.set()

    threading.Thread(target=outage_then_continuation, daemon=True).start()
    try:
        ids, gaps, tracker = _bounded(_track_stream, f"{server.url}/cam.ts", buffer)
    finally:
        server.stop()
    assert served.is_set()
    assert [g["reconnected"] for g in gaps][:1] == [True]  # a real outage and reconnect
    assert len(ids) > 50  # frames of both connections were tracked
    assert (len(set(ids)) == 1) == same_id and (tracker.restarts == 0) == same_id


def test_many_cameras_one_tracker_per_stream(tmp_path: Path) -> None:
    """Issue 28: two live cameras read as one source (a streams file: MultiSource, frames interleaved)
    show a square at nearly the same place; each stream has its own tracker, so each keeps one id and
    the two ids differ (one shared tracker would hand both cameras' boxes to the same track)."""
    servers = [Server("serve", _square_clip(tmp_path / f"{k}.ts", range(10 + k, 50 + k)), life_s=60) for k in (0, 2)]

    def one_session_each() -> None:
        deadline = time.monotonic() + 20
        while any(s.connections < 1 for s in servers) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        for server in servers:
            server.stop()

    threading.Thread(target=one_session_each, daemon=True).start()
    streams = tmp_path / "cams.txt"
    streams.write_text("".join(f"{s.url}/cam.ts\n" for s in servers))
    try:
        by_stream = _bounded(_track_streams, str(streams))
    finally:
        for server in servers:
            server.stop()
    assert len(by_stream) == 2 and all(len(ids) > 20 for ids in by_stream.values())
    per_stream = [set(ids) for ids in by_stream.values()]
    assert all(len(ids) == 1 for ids in per_stream) and per_stream[0] != per_stream[1]


def _track_streams(spec: str) -> dict[str, list[int]]:
    tracker, by_stream = Tracker("bytetrack"), {}
    with open_source(spec, SourceOptions(buffer=True, reconnect_s=1.0)) as src:
        for frame in src:
            ids = tracker.update(frame, _square_detection(frame.image)).track_ids.tolist()
            by_stream.setdefault(frame.stream, []).extend(ids)
    return by_stream
