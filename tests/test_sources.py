"""Tests for cvapps.io.sources: folders, globs, lists, videos and (simulated) live streams."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvapps.errors import CvappsError
from cvapps.io.sources import (
    ImageFilesSource,
    SourceOptions,
    StreamSource,
    VideoSource,
    WebcamSource,
    iter_image_files,
    open_source,
    redact_url,
)
from fault_corpus import EXPECTED_REASONS

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")




@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames, 64x48, 10 fps; frame i is filled with grey level 8 * i (survives mp4v)."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    assert writer.isOpened()
    for i in range(30):
        writer.write(np.full((48, 64, 3), 8 * i, np.uint8))
    writer.release()
    return path


# --------------------------------------------------------------------------------------------
# Still images
# --------------------------------------------------------------------------------------------
def test_folder_recursive_sorted_with_skips(corpus: tuple[Path, dict[str, bool]]) -> None:
    root, expected = corpus
    (root / ".hidden.jpg").write_bytes(b"")  # hidden files are not candidates
    (root / "notes.md").write_text("x")  # neither are non-image extensions
    try:
        with open_source(root) as src:
            assert isinstance(src, ImageFilesSource)
            assert not src.is_live and not src.is_video and src.fps is None
            assert src.frame_count == len(expected)
            frames = list(src)
    finally:
        (root / ".hidden.jpg").unlink()
        (root / "notes.md").unlink()
    readable = sorted(k for k, ok in expected.items() if ok)
    assert [Path(f.source).relative_to(root).as_posix() for f in frames] == readable
    assert [f.index for f in frames] == list(range(len(readable)))
    assert all(f.timestamp == 0.0 and f.image.shape[2] == 3 for f in frames)
    skipped = {Path(p).relative_to(root).as_posix(): reason for p, reason in src.skipped}
    assert set(skipped) == set(EXPECTED_REASONS)
    for name, reason in skipped.items():
        assert EXPECTED_REASONS[name] in reason
    assert src.dropped == 0


def test_folder_walk_is_lazy_and_sorted(tmp_path: Path) -> None:
    for rel in ["b/2.jpg", "b/1.png", "a.jpg", "a/z.jpg", "c.JPG", "b/x/0.jpg", "c/.ipynb/q.jpg"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    walk = iter_image_files(str(tmp_path))
    first = next(walk)  # a generator: nothing beyond the first folder is listed yet
    rest = list(walk)
    names = [Path(p).relative_to(tmp_path).as_posix() for p in [first, *rest]]
    assert names == ["a/z.jpg", "a.jpg", "b/1.png", "b/2.jpg", "b/x/0.jpg", "c.JPG"]


def test_reading_sources_does_not_modify_files(corpus: tuple[Path, dict[str, bool]]) -> None:
    root, _ = corpus
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    with open_source(root) as src:
        for _ in src:
            pass
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    assert before == after


def test_single_image(corpus: tuple[Path, dict[str, bool]]) -> None:
    root, _ = corpus
    with open_source(str(root / "good.png")) as src:
        frames = list(src)
    assert len(frames) == 1 and frames[0].source == str(root / "good.png")
    with open_source(root / "truncated.jpg") as src:
        assert list(src) == []
        assert src.skipped == [(str(root / "truncated.jpg"), "truncated or corrupt image data")]


def test_txt_list_source(corpus: tuple[Path, dict[str, bool]], tmp_path: Path) -> None:
    root, _ = corpus
    listing = tmp_path / "lists" / "val.txt"
    listing.parent.mkdir()
    (tmp_path / "lists" / "local.png").write_bytes((root / "one_pixel.png").read_bytes())
    listing.write_text(
        "\ufeff# validation images\n"
        f"{root / 'good.jpg'}\n"
        "\n"
        "local.png\r\n"  # relative to the txt's folder, Windows line ending
        "   # indented comment\n"
        "missing.jpg\n"
        f"{root / 'empty.jpg'}\n",
        encoding="utf-8",
    )
    with open_source(listing) as src:
        assert src.frame_count == 4
        frames = list(src)
    assert [f.source for f in frames] == [str(root / "good.jpg"), str(listing.parent / "local.png")]
    assert src.skipped == [
        (str(listing.parent / "missing.jpg"), "file not found"),
        (str(root / "empty.jpg"), "empty file (0 bytes)"),
    ]


def test_glob_source(corpus: tuple[Path, dict[str, bool]]) -> None:
    root, expected = corpus
    with open_source(f"{root}/**/*.jpg") as src:
        frames = list(src)
    got = [Path(f.source).relative_to(root).as_posix() for f in frames]
    want = sorted(k for k, ok in expected.items() if ok and k.endswith(".jpg"))
    assert sorted(got) == want and got == sorted(got)
    assert len(src.skipped) == 3  # truncated.jpg, empty.jpg, text.jpg
    with pytest.raises(CvappsError, match="source not found: .*no images match"):
        open_source(f"{root}/*.gif")


def test_list_source(corpus: tuple[Path, dict[str, bool]]) -> None:
    root, _ = corpus
    with open_source([root / "good.png", str(root / "gray.png"), root / "nested"]) as src:
        names = [Path(f.source).name for f in src]
    assert names == ["good.png", "gray.png", "inner.jpg"]


def test_source_not_found(tmp_path: Path) -> None:
    with pytest.raises(CvappsError, match=r"^source not found: .*nope$"):
        open_source(tmp_path / "nope")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CvappsError, match="unsupported source"):
        open_source(tmp_path / "weights.bin")
    with pytest.raises(CvappsError, match="vid_stride"):
        open_source(tmp_path, SourceOptions(vid_stride=0))


# --------------------------------------------------------------------------------------------
# Video files
# --------------------------------------------------------------------------------------------
def test_video_source(video: Path) -> None:
    with open_source(video) as src:
        assert isinstance(src, VideoSource) and src.is_video and not src.is_live
        assert src.frame_count == 30 and src.fps == pytest.approx(10.0)
        assert src.frame_size == (64, 48)
        frames = list(src)
    assert [f.index for f in frames] == list(range(30))
    assert frames[7].source == f"{video}#frame=000007"
    assert [f.timestamp for f in frames] == pytest.approx([i / 10 for i in range(30)])
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    for f in frames:
        assert abs(float(f.image.mean()) - 8 * f.index) < 4, f.index  # the right frame content


def test_video_stride(video: Path) -> None:
    with open_source(str(video), SourceOptions(vid_stride=3)) as src:
        frames = list(src)
    assert [f.index for f in frames] == list(range(0, 30, 3))
    assert [f.source for f in frames][:2] == [f"{video}#frame=000000", f"{video}#frame=000003"]
    assert [f.timestamp for f in frames] == pytest.approx([i / 10 for i in range(0, 30, 3)])
    for f in frames:
        assert abs(float(f.image.mean()) - 8 * f.index) < 4, f.index
    assert src.dropped == 0


def test_video_never_drops_with_slow_consumer(video: Path) -> None:
    with open_source(video, SourceOptions(queue_size=2)) as src:
        indices = []
        for f in src:
            time.sleep(0.005)
            indices.append(f.index)
    assert indices == list(range(30)) and src.dropped == 0


def test_bad_video(tmp_path: Path) -> None:
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(CvappsError, match="cannot open video"):
        open_source(tmp_path / "broken.mp4")


# --------------------------------------------------------------------------------------------
# Live sources, simulated with an injected capture factory
# --------------------------------------------------------------------------------------------
class FakeCapture:
    """A camera that produces numbered frames every ``period`` seconds.

    ``fail_after``: read() fails after this many frames (stream died). ``counter`` is shared
    across reopenings and holds the number of the last frame produced.
    """

    def __init__(
        self,
        counter: list[int],
        *,
        period: float = 0.002,
        fail_after: int | None = None,
        opened: bool = True,
        raise_after: int | None = None,
    ) -> None:
        self.counter = counter
        self.period = period
        self.fail_after = fail_after
        self.raise_after = raise_after
        self.opened = opened
        self.reads = 0
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802
        return self.opened and not self.released

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.released or (self.fail_after is not None and self.reads >= self.fail_after):
            return False, None
        if self.raise_after is not None and self.reads >= self.raise_after:
            raise RuntimeError("camera firmware exploded")
        time.sleep(self.period)
        self.reads += 1
        self.counter[0] += 1
        return True, np.full((4, 4, 3), self.counter[0] % 256, np.uint8)

    def grab(self) -> bool:
        return self.read()[0]

    def get(self, prop_id: int) -> float:
        props = {cv2.CAP_PROP_FPS: 25.0, cv2.CAP_PROP_FRAME_WIDTH: 4, cv2.CAP_PROP_FRAME_HEIGHT: 4}
        return props.get(prop_id, 0.0)

    def release(self) -> None:
        self.released = True


def test_keep_newest_drops_stale_frames() -> None:
    counter = [0]
    src = StreamSource("rtsp://cam/live", capture_factory=lambda _: FakeCapture(counter))
    assert src.is_live and not src.is_video and src.frame_count is None
    assert src.fps == 25.0 and src.frame_size == (4, 4)
    lags = []
    with src:
        for i, frame in enumerate(src):
            lags.append(counter[0] - (frame.index + 1))  # frames produced since this one
            time.sleep(0.03)  # slow consumer: ~15 frames are produced meanwhile
            if i == 9:
                break
    assert src.dropped > 20
    assert max(lags) <= 2, lags  # every yielded frame was (nearly) the newest one
    assert frame.source.startswith("rtsp://cam/live#frame=")


def test_buffer_true_keeps_every_frame() -> None:
    counter = [0]
    src = StreamSource(
        "rtsp://cam/live",
        SourceOptions(buffer=True, reconnect_s=0.0),
        capture_factory=lambda _: FakeCapture(counter, period=0.0005, fail_after=40),
    )
    with src:
        indices = []
        for frame in src:
            time.sleep(0.002)
            indices.append(frame.index)
    assert indices == list(range(40)) and src.dropped == 0


def test_stride_on_live_source() -> None:
    counter = [0]
    src = StreamSource(
        "udp://0.0.0.0:1234",
        SourceOptions(buffer=True, vid_stride=4, reconnect_s=0.0),
        capture_factory=lambda _: FakeCapture(counter, period=0.0, fail_after=20),
    )
    with src:
        assert [f.index for f in src] == [0, 4, 8, 12, 16]


def test_reconnect_then_finish_cleanly() -> None:
    counter = [0]
    opens = []

    def factory(url: str) -> FakeCapture:
        opens.append(time.monotonic())
        # The first connection delivers 5 frames then dies; the camera never comes back.
        return FakeCapture(counter, fail_after=5, opened=len(opens) == 1)

    src = StreamSource("rtsp://cam/live", SourceOptions(buffer=True, reconnect_s=1.2), capture_factory=factory)
    t0 = time.monotonic()
    with src:
        frames = list(src)  # must end by itself, without an exception
    elapsed = time.monotonic() - t0
    assert len(frames) == 5
    assert 1.0 < elapsed < 1.2 + 1.0
    gaps = np.diff(opens)
    assert len(opens) == 3  # open, retry after 0.5 s, retry after 1.0 s (capped by the deadline)
    assert gaps[0] == pytest.approx(0.5, abs=0.15)


def test_reconnect_resumes_after_outage() -> None:
    counter = [0]
    opens = []

    def factory(url: str) -> FakeCapture:
        opens.append(1)
        # connection 1: 3 frames; connection 2 refused; connection 3: 3 frames; then gone.
        return FakeCapture(counter, fail_after=3, opened=len(opens) in (1, 3))

    with StreamSource("rtsp://c", SourceOptions(buffer=True, reconnect_s=0.6), capture_factory=factory) as src:
        indices = [f.index for f in src]
    assert indices == list(range(6))


def test_stream_cannot_open_at_start() -> None:
    attempts = []

    def factory(url: str) -> FakeCapture:
        attempts.append(time.monotonic())
        return FakeCapture([0], opened=False)

    t0 = time.monotonic()
    url = "rtsp://admin:secret@10.0.0.5:554/s"
    with pytest.raises(CvappsError, match=r"^cannot open stream URL: rtsp://admin:\*\*\*@10.0.0.5:554/s$"):
        StreamSource(url, SourceOptions(reconnect_s=0.6), capture_factory=factory)
    assert 0.5 < time.monotonic() - t0 < 1.5
    assert len(attempts) == 3  # at 0 s, after 0.5 s, and a last one at the 0.6 s deadline


def test_webcam_open_failure_message() -> None:
    with pytest.raises(CvappsError, match=r"^cannot open webcam 99$"):
        open_source(99)
    with pytest.raises(CvappsError, match=r"^cannot open webcam 99$"):
        open_source("99")


def test_webcam_with_fake_capture() -> None:
    counter = [0]
    factory = lambda idx: FakeCapture(counter, fail_after=3)  # noqa: E731
    src = WebcamSource(0, SourceOptions(reconnect_s=0.0), capture_factory=factory)
    with src:
        frames = list(src)
    assert src.name == "webcam0" and src.is_live and len(frames) >= 1
    assert frames[-1].source.startswith("webcam0#frame=")


def test_reader_exception_reaches_consumer() -> None:
    counter = [0]
    src = StreamSource(
        "rtsp://c", SourceOptions(buffer=True), capture_factory=lambda _: FakeCapture(counter, raise_after=2)
    )
    with src, pytest.raises(CvappsError, match="camera firmware exploded"):
        for _ in src:
            pass
    assert list(src) == []  # iterating after the end terminates


def test_close_mid_iteration_is_prompt(video: Path, corpus: tuple[Path, dict[str, bool]]) -> None:
    counter = [0]
    live = StreamSource("rtsp://c", SourceOptions(buffer=True), capture_factory=lambda _: FakeCapture(counter))
    root, _ = corpus
    for src in (live, open_source(root, SourceOptions(queue_size=1)), open_source(video, SourceOptions(queue_size=1))):
        it = iter(src)
        next(it)
        time.sleep(0.05)  # let the reader block on a full queue
        t0 = time.monotonic()
        src.close()
        assert time.monotonic() - t0 < 1.0
        assert list(it) == []  # the iteration in progress ends
        assert src._stage.thread is not None and not src._stage.thread.is_alive()
    assert live._cap is None  # capture released


def test_close_before_iteration_releases_capture() -> None:
    caps = []

    def factory(url: str) -> FakeCapture:
        caps.append(FakeCapture([0]))
        return caps[-1]

    src = StreamSource("rtsp://c", capture_factory=factory)
    src.close()
    src.close()  # idempotent
    assert caps[0].released and list(src) == []


def test_stream_thread_count_stays_flat() -> None:
    before = threading.active_count()
    for _ in range(5):
        counter = [0]
        with StreamSource("rtsp://c", capture_factory=lambda _: FakeCapture(counter)) as src:
            next(iter(src))
    time.sleep(0.05)
    assert threading.active_count() <= before


def test_open_source_dispatch(video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = []

    class Recorder(StreamSource):
        def __init__(self, url: object, options: SourceOptions | None = None, **kw: object) -> None:
            made.append((url, options.buffer if options is not None else None))
            raise CvappsError("recorded")

    monkeypatch.setattr("cvapps.io.sources.StreamSource", Recorder)
    urls = ["rtsp://h/s", "RTSPS://h/s", "http://h/live", "https://h/s.m3u8", "udp://@:5000", "tcp://h:1",
            "http://h/cam.ts", "https://h/clip.mp4", "srt://h:9000"]  # any scheme://, any extension
    for url in urls:
        with pytest.raises(CvappsError, match="recorded"):
            open_source(url, SourceOptions(buffer=True))
    assert [u for u, _ in made] == urls
    assert all(b is True for _, b in made)


def test_redact_url() -> None:
    assert redact_url("rtsp://u:p@h:554/x?y=1") == "rtsp://u:***@h:554/x?y=1"
    assert redact_url("rtsp://h/x") == "rtsp://h/x"


def test_folder_symlink_cycle_terminates(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "a.png"), np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    with open_source(tmp_path) as src:
        assert [Path(f.source).name for f in src] == ["a.png"]


def test_hostile_entries_in_a_folder_are_reported(tmp_path: Path) -> None:
    """Issue 17: a FIFO, a symlink to /dev/zero, a file over the cap and symlink loops are skipped
    with a reason (none read, none hangs); the good image is still processed."""
    from cvapps.io.images import set_max_file_mb

    cv2.imwrite(str(tmp_path / "good.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "huge.bmp"), np.zeros((800, 800, 3), np.uint8))
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")  # ELOOP
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)
    set_max_file_mb(1)
    try:
        with open_source(tmp_path) as src:
            frames = list(src)
    finally:
        set_max_file_mb(None)
    assert [Path(f.source).name for f in frames] == ["good.png"]
    skipped = {Path(p).relative_to(tmp_path).as_posix(): reason for p, reason in src.skipped}
    assert "file too large" in skipped["huge.bmp"]
    assert "not a regular file" in skipped["zero.jpg"]
    assert skipped["loop.jpg"] == "symlink loop"
    assert "symlink loop" in skipped["sub/up"]
    if hasattr(os, "mkfifo"):
        assert "not a regular file" in skipped["fifo.jpg"]


def test_fifo_as_single_source_is_skipped(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tmp_path / "x.jpg")
    with open_source(tmp_path / "x.jpg") as src:
        assert list(src) == [] and "not a regular file" in src.skipped[0][1]
    os.mkfifo(tmp_path / "clip.mp4")
    with pytest.raises(CvappsError, match="not a regular file"):
        open_source(tmp_path / "clip.mp4")


def test_stream_that_opens_but_never_decodes_is_an_error() -> None:
    """Issue 11: no decodable frame is an error naming the source, not an empty, successful run."""
    counter = [0]
    src = StreamSource("rtsp://u:pw@cam/live", SourceOptions(buffer=True, reconnect_s=0.3),
                       capture_factory=lambda _: FakeCapture(counter, fail_after=0))
    with src, pytest.raises(CvappsError, match=r"^stream rtsp://u:\*\*\*@cam/live: no decodable video frame"):
        list(src)
