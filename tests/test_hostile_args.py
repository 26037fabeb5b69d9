"""Hostile arguments and inputs (trust boundary, part C): each ends as one line on stderr, a non-zero
exit where the run failed, nothing already written lost and bounded memory, from the CLI and the API.

Subprocess runs (:func:`cli_probe.run_cli`) only where the peak RSS is the point (zones and lines far
outside the frame); everything else runs ``cvapps.cli.main`` in this process."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_probe import one_line_error, run_cli
from tiny_checkpoints import ROOT, SHAPES, make_checkpoint

import cvapps
from cvapps.cli import main
from cvapps.errors import CvappsError

RSS_LIMIT_MB = 2048
SHAPES_DATA = ROOT / "sample_data" / "shapes"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    models = tmp_path_factory.mktemp("models")
    return {
        "classify": make_checkpoint(models / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES),
        "segment": make_checkpoint(models / "seg.pt", "segment_shapes.yaml", ["data.imgsz=64"],
                                   ["background", *SHAPES]),
        "detect": make_checkpoint(models / "yolo.pt", "yolo_shapes.yaml", ["data.imgsz=64"], SHAPES, [1, 2, 3]),
    }


@pytest.fixture(scope="module")
def frames160(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames160")
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(folder / f"f{i}.png"), rng.integers(0, 255, (160, 160, 3), dtype=np.uint8))
    return folder


# -- zones and lines ----------------------------------------------------------------------------

def test_zone_far_outside_the_frame_is_clipped(ckpts, frames160, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, _, err, peak = run_cli(["detect", str(frames160), "--model", str(ckpts["detect"]), "--out", str(out),
                                     "--device", "cpu", "--quiet", "--zone", "0,0,100000,0,100000,100000"])
    print(f"zone to 100000 on a 160 px frame: peak RSS {peak:.0f} MB")
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert peak < RSS_LIMIT_MB
    counts = json.loads((out / "counts.json").read_text())
    assert counts["zones"][0]["zone"] == [[0, 0], [100000, 0], [100000, 100000]]  # reported as given


def test_zone_clipping_keeps_what_is_inside_the_frame() -> None:
    from cvapps.analytics.counting import Counter, clip_polygon
    from cvapps.structures import Detections, Frame

    assert clip_polygon([(-10, -10), (-5, -10), (-5, -5)], 160, 160) == []  # misses the frame
    counter = Counter(zones=[[(0, 0), (100000, 0), (100000, 100000)], [(-50, -50), (-1, -50), (-1, -1)]])
    frame = Frame(np.zeros((160, 160, 3), np.uint8), "a.png")
    # bottom centres (150, 20) above the diagonal y = x: inside; (20, 150) below it: outside
    det = Detections(torch.tensor([[140.0, 0, 160, 20], [10, 130, 30, 150]]), torch.tensor([0.9, 0.9]),
                     torch.tensor([0, 0]))
    counts = counter.update(frame, det)
    assert [z.count for z in counts.zones] == [1, 0]
    zone = next(iter(counter.sources.values())).zones[0]
    assert zone.mask.shape == (162, 162)  # the frame, not 100002 x 100002


@pytest.mark.parametrize("spec", ["0,0,1e308,1e308", "0,0,inf,5", "0,0,nan,1", "0,0,2e6,0"])
def test_absurd_count_line_is_one_line(ckpts, frames160, tmp_path: Path, capsys, spec: str) -> None:
    rc = main(["detect", str(frames160), "--model", str(ckpts["detect"]), "--out", str(tmp_path / "o"),
               "--device", "cpu", "--quiet", "--count-line", spec])
    one_line_error(rc, capsys.readouterr().err)
    model = cvapps.load(ckpts["detect"], device="cpu")
    with pytest.raises(CvappsError, match="count-line"):
        model.predict(str(frames160), count_lines=[spec])


def test_absurd_count_line_in_a_new_process(ckpts, frames160, tmp_path: Path) -> None:
    rc, _, err, peak = run_cli(["detect", str(frames160), "--model", str(ckpts["detect"]), "--out",
                                str(tmp_path / "o"), "--device", "cpu", "--quiet", "--count-line", "0,0,1e308,1e308"])
    one_line_error(rc, err)
    assert peak < RSS_LIMIT_MB


def test_api_takes_zone_and_line_strings_whole(ckpts, frames160) -> None:
    model = cvapps.load(ckpts["detect"], device="cpu")
    results = model.predict(str(frames160), zones="0,0,100,0,100,80", count_lines="0,60,160,60")
    assert len(results) == 2
    counts = results[0].prediction.counts
    assert len(counts.zones) == 1 and counts.zones[0].polygon == [(0, 0), (100, 0), (100, 80)]
    assert len(counts.lines) == 1 and counts.lines[0].points == (0, 60, 160, 60)
    # one polygon or one line not in a list is one too; anything else is one line
    results = model.predict(str(frames160), zones=[(0, 0), (100, 0), (100, 80)], count_lines=(0, 60, 160, 60))
    assert len(results[0].prediction.counts.zones) == 1
    for bad in ({"zones": 5}, {"zones": [None]}, {"count_lines": "0,0"}):
        with pytest.raises(CvappsError):
            model.predict(str(frames160), **bad)


# -- option values -------------------------------------------------------------------------------

@pytest.mark.parametrize("topk", ["0", "-3"])
def test_topk_below_one(ckpts, frames160, tmp_path: Path, capsys, topk: str) -> None:
    for command in ("classify", "predict"):
        rc = main([command, str(frames160), "--model", str(ckpts["classify"]), "--out", str(tmp_path / command),
                   "--device", "cpu", "--quiet", "--topk", topk])
        err = capsys.readouterr().err
        one_line_error(rc, err)
        assert "--topk" in err
    with pytest.raises(CvappsError, match="topk"):
        cvapps.load(ckpts["classify"], device="cpu").predict(str(frames160), topk=int(topk))


@pytest.mark.parametrize("options", [{"conf": math.nan}, {"conf": -1}, {"conf": "0.5"}, {"iou": 5},
                                     {"iou": 0}, {"max_det": 0}, {"max_det": 2.5}])
def test_api_checks_options_as_the_cli_does(ckpts, frames160, options) -> None:
    model = cvapps.load(ckpts["detect"], device="cpu")
    with pytest.raises(CvappsError) as info:
        model.predict(str(frames160), **options)
    assert "\n" not in str(info.value) and next(iter(options)) in str(info.value)
    with pytest.raises(CvappsError):  # the streaming form checks before the first frame too
        model.predict(str(frames160), stream=True, **options)


@pytest.mark.parametrize("args", [["--conf", "nan"], ["--conf", "-1"], ["--iou", "5"], ["--max-det", "0"]])
def test_cli_box_options(ckpts, frames160, tmp_path: Path, capsys, args: list[str]) -> None:
    rc = main(["detect", str(frames160), "--model", str(ckpts["detect"]), "--out", str(tmp_path / "o"),
               "--device", "cpu", "--quiet", *args])
    err = capsys.readouterr().err
    one_line_error(rc, err)
    assert args[0] in err


# -- sources and exit codes ------------------------------------------------------------------------

def test_streams_file_with_a_path_line_is_refused(ckpts, frames160, tmp_path: Path, capsys) -> None:
    from cvapps.io.sources import is_streams_file, open_source

    txt = tmp_path / "cams.txt"
    txt.write_text("# cameras\nrtsp://127.0.0.1:1/live gate\nnot_a_url.jpg\n")
    assert is_streams_file(txt)
    with pytest.raises(CvappsError, match=r"cams\.txt:3: "):
        open_source(str(txt))
    rc = main(["classify", str(txt), "--model", str(ckpts["classify"]), "--out", str(tmp_path / "o"),
               "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    one_line_error(rc, err)
    assert "cams.txt:3" in err
    listing = tmp_path / "images.txt"  # an image list without URLs stays an image list
    listing.write_text(f"{frames160 / 'f0.png'}\n{frames160 / 'f1.png'}\n")
    assert not is_streams_file(listing)


def test_run_with_no_readable_input_exits_non_zero(ckpts, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "b.png").write_bytes(b"")
    for command in ("classify", "detect", "segment"):
        model = ckpts["detect" if command == "detect" else command]
        rc = main([command, str(folder), "--model", str(model), "--out", str(tmp_path / command),
                   "--device", "cpu", "--quiet"])
        out, err = capsys.readouterr()
        assert rc == 1, (command, out, err)
        lines = [ln for ln in err.splitlines() if not ln.startswith("skipped ")]
        assert lines == ["error: nothing was processed: all 2 inputs were skipped (see above)"], err
        assert len(err.splitlines()) == 3 and "processed 0 images" in out


# -- Ray addresses ----------------------------------------------------------------------------------

class _NotRay:
    """A loopback TCP server that is not Ray: it accepts and answers HTTP/1.1 400 to anything."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            try:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_unreachable_or_wrong_address_is_one_line(ckpts, frames160, tmp_path: Path, capsys) -> None:
    pytest.importorskip("ray")
    server = _NotRay()
    try:
        for address in (f"127.0.0.1:{_closed_port()}", f"ray://127.0.0.1:{server.port}", f"127.0.0.1:{server.port}",
                        "http://127.0.0.1:1"):
            t0 = time.monotonic()
            rc = main(["detect", str(frames160), "--model", str(ckpts["detect"]), "--out", str(tmp_path / "o"),
                       "--device", "cpu", "--quiet", "--ray", address])
            err = capsys.readouterr().err
            one_line_error(rc, err)
            assert time.monotonic() - t0 < 30, address
            assert "--ray" in err, err
        with pytest.raises(CvappsError, match="not as a Ray cluster"):
            cvapps.load(ckpts["detect"], device="cpu").predict_ray(str(frames160), tmp_path / "api",
                                                                   address=f"ray://127.0.0.1:{server.port}")
    finally:
        server.close()
    assert not (tmp_path / "o" / "predictions.json").exists()


# -- the preview server -----------------------------------------------------------------------------

def test_serve_drops_idle_connections_and_caps_them() -> None:
    from urllib.request import urlopen

    from cvapps.io.preview import MJPEGServer

    server = MJPEGServer("127.0.0.1:0", lambda image, prediction: image, read_timeout=1.0, max_connections=4)
    idle = []
    try:
        t0 = time.monotonic()
        for _ in range(12):  # never send a request
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        busy = 0
        for s in idle:  # those over the cap are answered 503 at once; the rest are closed after the timeout
            data = s.recv(200)
            busy += data.startswith(b"HTTP/1.0 503")
            assert data == b"" or data.startswith(b"HTTP/1.0 503"), data
        assert busy >= 4 and time.monotonic() - t0 < 8
        time.sleep(0.2)
        with urlopen(f"{server.url}stats.json", timeout=5) as response:  # a new viewer is served again
            assert json.loads(response.read())["frames"] == 0
        assert threading.active_count() < 20
    finally:
        for s in idle:
            s.close()
        server.close()



def test_serve_drops_a_client_that_trickles_its_request() -> None:
    from cvapps.io.preview import MJPEGServer

    server = MJPEGServer("127.0.0.1:0", lambda image, prediction: image, read_timeout=1.0, max_connections=4)
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        t0 = time.monotonic()
        dropped = False
        for byte in b"GET / HTTP/1.0\r\nX-Slow: " + b"a" * 40:  # one byte every 0.2 s: each read is quick
            try:
                client.sendall(bytes([byte]))
            except OSError:
                dropped = True
                break
            time.sleep(0.2)
            if time.monotonic() - t0 > 6:
                break
        client.settimeout(5)
        try:
            dropped = dropped or client.recv(100) == b""
        except OSError:
            dropped = True
        assert dropped and time.monotonic() - t0 < 6  # the whole request had read_timeout, not each byte
    finally:
        client.close()
        server.close()

# -- segmentation val and training ------------------------------------------------------------------

def _seg_val_copy(tmp_path: Path, categories: list[str] | None) -> Path:
    root = tmp_path / "segdata"
    for sub in ("images/val", "masks/val"):
        shutil.copytree(SHAPES_DATA / sub, root / sub)
    if categories is not None:
        data = json.loads((SHAPES_DATA / "annotations" / "val.json").read_text())
        for cat, name in zip(data["categories"], categories):
            cat["name"] = name
        (root / "annotations").mkdir()
        (root / "annotations" / "val.json").write_text(json.dumps(data))
    return root


def test_segment_val_refuses_other_class_names(ckpts, tmp_path: Path, capsys) -> None:
    root = _seg_val_copy(tmp_path, ["apple", "pear", "plum"])
    rc = main(["val", str(ckpts["segment"]), f"data.root={root}", "train.device=cpu", "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err
    one_line_error(rc, err)
    assert "differ from data.names" in err
    with pytest.raises(CvappsError, match="differ"):
        cvapps.load(ckpts["segment"], device="cpu").val(root)


def test_segment_val_prints_and_writes_valid_json(tmp_path: Path, capsys) -> None:
    # a class no mask holds and the model never predicts: its IoU is undefined
    ckpt = make_checkpoint(tmp_path / "seg5.pt", "segment_shapes.yaml", ["data.imgsz=64"],
                           ["background", *SHAPES, "hexagon"])
    state = torch.load(ckpt, weights_only=True)
    for key, value in state["model"].items():
        if key.endswith("bias") and value.shape == (5,):
            value[4] = -1e4
    torch.save(state, ckpt)
    root = _seg_val_copy(tmp_path, None)  # masks only: names come from the checkpoint
    rc = main(["val", str(ckpt), f"data.root={root}", "train.device=cpu", "--out", str(tmp_path / "v")])
    out, err = capsys.readouterr()
    assert rc == 0, err

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    printed = json.loads(out[out.index("{"):], parse_constant=refuse)
    assert printed["iou/hexagon"] is None and isinstance(printed["miou"], float)
    written = json.loads((tmp_path / "v" / "val_metrics.json").read_text(), parse_constant=refuse)
    assert written["iou/hexagon"] is None


def test_segment_training_without_labels_is_refused(tmp_path: Path, capsys) -> None:
    root = tmp_path / "blank"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), np.full((32, 32, 3), 90, np.uint8))
            cv2.imwrite(str(root / "masks" / split / f"{i}.png"), np.zeros((32, 32), np.uint8))
    rc = main(["train", str(ROOT / "configs" / "segment_shapes.yaml"), f"data.root={root}",
               "data.names=[background, circle]", f"out={tmp_path / 'run'}", "train.epochs=1", "train.device=cpu",
               "--quiet"])
    err = capsys.readouterr().err
    one_line_error(rc, err)
    assert "no usable annotations" in err
    assert not (tmp_path / "run" / "last.pt").exists()


# -- names in outputs ---------------------------------------------------------------------------------

def test_class_name_with_a_newline_is_refused(ckpts, frames160, tmp_path: Path, capsys) -> None:
    from cvapps.io.sinks.mot import MotTracksSink

    state = torch.load(ckpts["detect"], weights_only=True)
    state["class_names"] = ["circle", "squ\nare", "triangle"]
    bad = tmp_path / "bad_names.pt"
    torch.save(state, bad)
    rc = main(["detect", str(frames160), "--model", str(bad), "--out", str(tmp_path / "o"), "--device", "cpu",
               "--quiet", "--track"])
    err = capsys.readouterr().err
    one_line_error(rc, err)
    assert "single-line" in err
    assert not (tmp_path / "o" / "tracks" / "labels.txt").exists()
    with pytest.raises(CvappsError, match="single-line"):
        cvapps.load(bad, device="cpu").predict(str(frames160))
    with pytest.raises(CvappsError, match="single-line"):
        MotTracksSink(tmp_path / "t", ["a", "b\r"])


def test_csv_cells_are_not_formulas(tmp_path: Path) -> None:
    from cvapps.io.sinks import ClassificationCSV, close_all
    from cvapps.structures import Classification, Frame, Prediction

    names = ["=HYPERLINK(\"x\")", "-2", "+cmd", "@SUM(A1)", "\tx", "plain", "-0.5"]
    sink = ClassificationCSV(tmp_path / "p.csv", names, topk=3)
    image = np.zeros((4, 4, 3), np.uint8)
    for source, label, topk in (("=cmd|' /C calc'!A0.png", 0, [(0, 0.5), (1, 0.3), (6, 0.2)]),
                                ("-1.png", 2, [(2, 0.5), (3, 0.3), (4, 0.2)]), ("ok.png", 5, [(5, 0.5), (6, 0.3), (6, 0.2)])):
        sink.write(Frame(image, source), Prediction(classification=Classification(label, 0.5, topk)))
    assert close_all([sink]) == []
    rows = list(csv.reader((tmp_path / "p.csv").open(newline="")))[1:]
    assert rows[0][:5] == ["'=cmd|' /C calc'!A0.png", "'=HYPERLINK(\"x\")", "0.5000", "-2", "0.3000"]
    assert rows[0][5] == "-0.5"  # a number, not a formula: as it is
    assert rows[1][:5] == ["'-1.png", "'+cmd", "0.5000", "'@SUM(A1)", "0.3000"] and rows[1][5] == "'\tx"
    assert rows[2][:2] == ["ok.png", "plain"]


def test_coco_file_name_of_a_non_utf8_file_round_trips(ckpts, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/bad\xffname.png"
    _, buf = cv2.imencode(".png", np.full((48, 48, 3), 120, np.uint8))
    with open(raw, "wb") as fh:
        fh.write(buf.tobytes())
    out = tmp_path / "out"
    rc = main(["detect", str(folder), "--model", str(ckpts["detect"]), "--out", str(out), "--device", "cpu",
               "--quiet", "--save-json", "--no-images"])
    assert rc == 0, capsys.readouterr().err
    text = (out / "predictions_coco.json").read_bytes()
    text.decode("ascii")  # plain ASCII JSON
    assert b"bad\\udcffname.png" in text
    name = json.loads(text)["images"][0]["file_name"]
    assert os.fsencode(name) == b"bad\xffname.png" and (folder / name).is_file()


def test_training_refuses_a_class_folder_name_with_a_newline(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("circle", "squ\nare"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            cv2.imwrite(str(folder / "a.png"), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    rc = main(["train", str(ROOT / "configs/classify_shapes.yaml"), f"data.root={tmp_path / 'data'}",
               f"out={tmp_path / 'run'}", "train.epochs=1", "data.imgsz=32", "train.device=cpu"])
    err = capsys.readouterr().err
    one_line_error(rc, err)
    assert "single-line" in err
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before an epoch was spent
