"""The annotated-video sink writes H.264 MP4 a browser plays (issue 14), and falls back to mp4v only
when PyAV cannot; the per-stream video sink; default outputs of video and stream sources."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from cvapps.io.sinks import VideoPerSource, VideoWriterSink, count_video_frames, make_drawer
from cvapps.io.sinks import video as video_module
from cvapps.structures import Detections, Frame, Prediction

av = pytest.importorskip("av")  # the "video" extra (installed by the "test" extra)
SHAPES = ["circle", "square", "triangle"]


def _probe(path: Path) -> dict:
    """Codec, size, pixel format, decoded frame count and duration (s) of a video, by PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"codec": stream.codec_context.name, "size": (stream.width, stream.height),
                "pix_fmt": stream.codec_context.pix_fmt}
        times = [float(frame.pts * frame.time_base) for frame in container.decode(video=0)]
    return {**info, "frames": len(times), "times": times}


def _frames(n: int, size: tuple[int, int], name: str = "clip.mp4", times: list[float] | None = None) -> list[Frame]:
    rng = np.random.default_rng(0)
    w, h = size
    return [Frame.of_video(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), name, k, times[k] if times else k / 10)
            for k in range(n)]


def _top_level_boxes(path: Path) -> list[bytes]:
    data, pos, boxes = path.read_bytes(), 0, []
    while pos + 8 <= len(data):
        boxes.append(data[pos + 4:pos + 8])
        pos += int.from_bytes(data[pos:pos + 4], "big")
    return boxes


def test_video_is_h264_mp4_with_the_index_first(tmp_path: Path) -> None:
    sink = VideoWriterSink(tmp_path / "v.mp4", make_drawer(SHAPES), fps=10)
    for frame in _frames(30, (96, 64)):
        sink.write(frame, Prediction(Detections.empty()))
    sink.close()
    info = _probe(tmp_path / "v.mp4")
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["size"] == (96, 64) and info["frames"] == 30
    assert info["times"][-1] == pytest.approx(2.9, abs=0.01)  # 10 fps, constant rate
    boxes = _top_level_boxes(tmp_path / "v.mp4")
    assert boxes.index(b"moov") < boxes.index(b"mdat"), boxes  # +faststart: plays while downloading
    assert count_video_frames(tmp_path / "v.mp4") == 30  # OpenCV decodes it too
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temp file left


def test_odd_size_is_padded_to_even(tmp_path: Path) -> None:
    sink = VideoWriterSink(tmp_path / "odd.mp4", make_drawer(SHAPES), fps=5)
    for frame in _frames(4, (65, 49)):
        sink.write(frame, Prediction(Detections.empty()))
    sink.close()
    info = _probe(tmp_path / "odd.mp4")
    assert info["codec"] == "h264" and info["size"] == (66, 50) and info["frames"] == 4


def test_live_frames_keep_their_timestamps(tmp_path: Path) -> None:
    """A live source's frames are placed at their own times: a 2 s outage stays 2 s long, with no frames
    invented for it."""
    times = [0.0, 0.1, 0.2, 2.2, 2.3]
    sink = VideoWriterSink(tmp_path / "live.mp4", make_drawer(SHAPES), live=True)
    for frame in _frames(5, (64, 48), "tcp://cam", times):
        sink.write(frame, Prediction(Detections.empty()))
    sink.close()
    info = _probe(tmp_path / "live.mp4")
    assert info["frames"] == 5 and info["codec"] == "h264"
    assert info["times"] == pytest.approx(times, abs=0.002)


def test_falls_back_to_mp4v_with_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(video_module, "h264_unavailable", lambda: "PyAV is not installed (test)")
    monkeypatch.setattr(video_module, "_warned", [])
    for name in ("a.mp4", "b.mp4"):
        sink = VideoWriterSink(tmp_path / name, make_drawer(SHAPES), fps=10)
        for frame in _frames(3, (64, 48)):
            sink.write(frame, Prediction(Detections.empty()))
        sink.close()
        assert _probe(tmp_path / name)["codec"] == "mpeg4" and count_video_frames(tmp_path / name) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: PyAV is not installed (test); writing mp4v video, which web browsers do not play"]


def test_one_video_per_stream(tmp_path: Path) -> None:
    class Streams:  # what VideoPerSource asks of a many-stream source
        stems = {"tcp://a:1": "a_1", "tcp://b:2": "b_2"}

        def stream_of(self, frame: Frame) -> str:
            return frame.stream

        def stream_fps(self, name: str) -> float:
            return 10.0

    sink = VideoPerSource(tmp_path, make_drawer(SHAPES))
    sink.start(Streams())
    a, b = _frames(6, (64, 48), "tcp://a:1"), _frames(3, (80, 60), "tcp://b:2")
    for frame in [a[0], b[0], a[1], a[2], b[1], a[3], a[4], b[2], a[5]]:
        sink.write(frame, Prediction(Detections.empty()))
    assert sorted(p.name for p in sink.targets) == ["a_1.mp4", "b_2.mp4"]
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_1.mp4", "b_2.mp4"]
    assert (_probe(tmp_path / "a_1.mp4")["frames"], _probe(tmp_path / "a_1.mp4")["size"]) == (6, (64, 48))
    assert (_probe(tmp_path / "b_2.mp4")["frames"], _probe(tmp_path / "b_2.mp4")["size"]) == (3, (80, 60))


def test_video_and_stream_sources_default_to_video_not_images(tmp_path: Path) -> None:
    from cvapps.cli.predict import frame_outputs

    streams = tmp_path / "streams.txt"
    streams.write_text("rtsp://10.0.0.5/live gate\n# a comment\n0\n")
    images = tmp_path / "images.txt"
    images.write_text("a.jpg\n")
    clip = tmp_path / "clip.mp4"  # SOURCE is described once, up front: it must exist (a file, by its extension)
    clip.write_bytes(b"")

    def outputs(source: str, **flags: bool) -> tuple[bool, bool, bool]:
        return frame_outputs(argparse.Namespace(source=source, **flags))

    # (per-frame images, annotated video, COCO JSON pair)
    assert outputs(str(clip)) == (False, True, True)
    assert outputs("rtsp://cam/live") == (False, True, True)
    assert outputs("0") == (False, True, True)
    assert outputs(str(streams)) == (False, True, False)  # JSON lines instead (written as they come)
    assert outputs(str(streams), save_images=True) == (True, True, False)
    assert outputs("rtsp://cam/live", save_images=True) == (True, True, True)
    assert outputs(str(images)) == (True, False, False)


_PAGE = """<!doctype html><html><body><video id="v" src="v.mp4" muted autoplay playsinline></video>
<pre id="out">pending</pre><script>
const v = document.getElementById("v"), out = document.getElementById("out");
v.addEventListener("error", () => { out.textContent = "error " + (v.error && v.error.code); });
v.addEventListener("timeupdate", () => {
  if (v.currentTime > 0.5 && !v.error) out.textContent = "played " + v.videoWidth + "x" + v.videoHeight; });
v.play().catch(e => { out.textContent = "play failed " + e; });
</script></body></html>"""


def _chromium() -> str | None:
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="needs a Chromium binary")
def test_headless_chromium_plays_the_video(tmp_path: Path) -> None:
    """A browser's ``<video>`` element plays the annotated MP4: currentTime advances, no error (an
    mp4v file fails this: "no supported source")."""
    import re
    import subprocess

    sink = VideoWriterSink(tmp_path / "v.mp4", make_drawer(SHAPES), fps=10)
    for frame in _frames(30, (96, 64)):
        sink.write(frame, Prediction(Detections.empty()))
    sink.close()
    (tmp_path / "page.html").write_text(_PAGE)
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                           "--autoplay-policy=no-user-gesture-required", "--allow-file-access-from-files",
                           "--virtual-time-budget=3000", "--dump-dom", (tmp_path / "page.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    status = re.search(r'<pre id="out">([^<]*)', proc.stdout)
    assert status is not None, proc.stderr[-2000:]
    assert status.group(1) == "played 96x64"
