"""One decision of what a source is (describe_source -> SourceSpec), shared by the local sources and
Ray's planner; frames that know their stream; the one video decode loop."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvapps.engine.ray_plan import plan_items
from cvapps.engine.ray_read import decode_items, item_rows
from cvapps.errors import CvappsError
from cvapps.io.sources import (
    SourceOptions,
    SourceSpec,
    describe_source,
    local_inputs,
    open_source,
    source_paths,
)
from cvapps.io.video_frames import decode_frames
from cvapps.structures import Frame


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images/{a,b}.png, images/sub/c.png, clip.mp4 (12 frames, 10 fps), list.txt (relative paths)."""
    root = tmp_path_factory.mktemp("spec")
    (root / "images" / "sub").mkdir(parents=True)
    for rel in ("a.png", "b.png", "sub/c.png"):
        cv2.imwrite(str(root / "images" / rel), np.full((8, 8, 3), 50, np.uint8))
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(12):
        writer.write(np.full((48, 64, 3), 16 * i, np.uint8))
    writer.release()
    (root / "list.txt").write_text("# images\nimages/b.png\n\nimages/sub\n")
    return root


def _local_paths(source: object) -> list[str]:
    with open_source(source) as src:  # type: ignore[arg-type]
        return [frame.stream for frame in src]


def _ray_paths(source: object) -> list[str]:
    items, skipped = plan_items(source)
    assert not skipped
    return list(dict.fromkeys(item.path for item in items))  # a video is one path however it is cut


@pytest.mark.parametrize("kind, make", [
    ("folder", lambda t: str(t / "images")),
    ("glob", lambda t: str(t / "images" / "**" / "*.png")),
    ("list", lambda t: str(t / "list.txt")),
    ("paths", lambda t: [t / "images" / "a.png", t / "images" / "sub"]),
    ("image", lambda t: t / "images" / "b.png"),
])
def test_file_sources_resolve_alike_for_local_and_ray(tree: Path, kind: str, make) -> None:
    source = make(tree)
    spec = describe_source(source)
    assert spec.kind == kind and describe_source(spec) is spec
    want = list(source_paths(spec))
    assert want and _local_paths(source) == want == _ray_paths(source) == _ray_paths(spec)
    assert spec.root == (str(tree / "images") if kind == "folder" else None)


def test_video_resolves_alike_and_its_frames_carry_stream_and_frame_index(tree: Path) -> None:
    video = str(tree / "clip.mp4")
    spec = describe_source(video)
    assert (spec.kind, spec.paths, spec.is_video, spec.is_live) == ("video", (video,), True, False)
    assert _ray_paths(video) == [video]
    with open_source(spec, SourceOptions(vid_stride=2, shard="1/2")) as src:
        frames = list(src)
    assert [f.frame_index for f in frames] == [2, 6, 10] == [f.index for f in frames]
    assert all(f.stream == video and f.is_video for f in frames)
    assert frames[0].source == f"{video}#frame=000002"  # the display name, made from the two
    assert frames[1].timestamp == pytest.approx(0.6)
    with open_source(str(tree / "images")) as src:
        still = next(iter(src))
    assert still.frame_index is None and not still.is_video and still.stream == still.source


def test_ray_rows_carry_stream_and_frame_index(tree: Path) -> None:
    video, image = str(tree / "clip.mp4"), str(tree / "images" / "a.png")
    items, _ = plan_items([video, image], chunk=5)
    assert [(it.kind, it.start, it.end) for it in items] == [("video", 0, 5), ("video", 5, 10), ("video", 10, -1),
                                                           ("image", 0, -1)]
    rows = item_rows(items[1:])
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = list(decode_items(batch, vid_stride=2))
    assert [list(b["frame_index"]) for b in out] == [[6, 8], [10], [-1]]
    assert [list(b["stream"]) for b in out] == [[video, video], [video], [image]]
    assert list(out[0]["source"]) == [f"{video}#frame=000006", f"{video}#frame=000008"]


@pytest.mark.parametrize("source, kind", [
    (0, "webcam"), ("3", "webcam"), ("rtsp://user:pw@cam/live", "stream"), ("http://host/clip.mp4", "stream"),
])
def test_live_sources(source: object, kind: str) -> None:
    spec = describe_source(source)
    assert spec.kind == kind and spec.is_live and local_inputs(spec) == ([], [])
    assert spec.webcam == (int(source) if kind == "webcam" else None)  # type: ignore[arg-type]
    assert spec.url == (source if kind == "stream" else None)
    with pytest.raises(CvappsError, match="not live streams"):
        plan_items(source)


def test_txt_rule_streams_file_or_image_list(tree: Path, tmp_path: Path) -> None:
    streams = tmp_path / "cams.txt"
    streams.write_text("# cameras\nrtsp://10.0.0.5/live gate\n1\n")
    spec = describe_source(streams)
    assert spec.kind == "streams" and [s.name for s in spec.streams] == ["gate", "webcam1"]
    assert local_inputs(spec) == ([str(streams)], [])
    with pytest.raises(CvappsError, match="not live streams"):
        plan_items(spec)
    webcams = tmp_path / "webcams.txt"
    webcams.write_text("0\n2\n")
    assert describe_source(webcams).kind == "streams"
    bad = tmp_path / "bad.txt"
    bad.write_text("rtsp://10.0.0.5/live\nimages/a.png\n")  # any URL line: a streams file, so the path is an error
    for decide in (describe_source, open_source, plan_items, local_inputs):
        with pytest.raises(CvappsError, match=r"bad\.txt:2: expected a stream URL"):
            decide(str(bad))
    assert describe_source(tree / "list.txt").kind == "list"
    files, folders = local_inputs(tree / "list.txt")
    assert files == [str(tree / "list.txt"), str(tree / "images" / "b.png")]
    assert folders == [str(tree / "images" / "sub")]


@pytest.mark.parametrize("source, message", [
    ("", "empty source"), ("no/such/dir", "source not found"), (True, "invalid source"), (1.5, "invalid source"),
    ("nothing/*.png", "no images match"),
])
def test_bad_sources_are_one_line_errors(source: object, message: str) -> None:
    with pytest.raises(CvappsError, match=message):
        describe_source(source)


def test_unsupported_file_is_refused_alike(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"x")
    for decide in (describe_source, open_source, plan_items):
        with pytest.raises(CvappsError, match="unsupported source"):
            decide(weights)


def test_source_options_are_checked_once() -> None:
    assert SourceOptions().shard == (0, 1) and SourceOptions(shard="1/3").shard == (1, 3)
    assert SourceOptions(shard=(2, 4)).shard == (2, 4)
    for bad in ({"vid_stride": 0}, {"vid_stride": True}, {"shard": "3/3"}, {"queue_size": 0}, {"reconnect_s": -1},
                {"reconnect_s": float("nan")}, {"max_file_mb": 0}):
        with pytest.raises(CvappsError):
            SourceOptions(**bad)


class _FakeCapture:
    """Frames 0..n-1, frame k filled with k; counts decodes and grabs."""

    def __init__(self, n: int) -> None:
        self.n, self.pos, self.reads, self.grabs = n, 0, 0, 0

    def get(self, prop: int) -> float:
        return 5.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop: int, value: float) -> bool:
        self.pos = int(value)
        return True

    def grab(self) -> bool:
        self.grabs += 1
        self.pos += 1
        return self.pos <= self.n

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.pos >= self.n:
            return False, None
        self.reads += 1
        self.pos += 1
        return True, np.full((2, 2, 3), self.pos - 1, np.uint8)


def test_one_decode_loop_strides_shards_and_ranges() -> None:
    cap = _FakeCapture(20)
    got = [(i, ts, int(img[0, 0, 0])) for i, ts, img in decode_frames(cap, vid_stride=2, shard=(1, 3), start=4, end=17)]
    assert got == [(8, 1.6, 8), (14, 2.8, 14)]  # strided positions 4 and 7: shard 1 of 3 (1, 4, 7, ...)
    assert cap.reads == 2  # the others were grabbed, never decoded
    assert [i for i, _, _ in decode_frames(_FakeCapture(5))] == [0, 1, 2, 3, 4]


def test_frame_defaults_still_image_stream() -> None:
    frame = Frame(np.zeros((1, 1, 3), np.uint8), os.path.join("d", "a.png"), 3)
    assert frame.stream == frame.source and frame.frame_index is None
    video = Frame.of_video(np.zeros((1, 1, 3), np.uint8), "cam", 7, 0.7)
    assert (video.source, video.index, video.stream, video.frame_index) == ("cam#frame=000007", 7, "cam", 7)
    assert isinstance(describe_source(SourceSpec("folder", "x", ("x",))), SourceSpec)
