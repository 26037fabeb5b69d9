#!/usr/bin/env python
"""Count objects crossing lines in a stream or video: tracks, line counts and a live page.

    python pipelines/count_traffic.py rtsp://cam/stream --model det.pt --line 0,360,1280,360 --serve 0.0.0.0:8080
    python pipelines/count_traffic.py traffic.mp4 --model yolov8n.pt --line 640,0,640,720 --zone 0,0,400,0,400,720,0,720

Built on the public API only: ``cvapps.load(model).predict(source, stream=True, track=..., count_lines=...)``.
Writes OUT/<source>.mp4 (tracks with trails, lines with their in/out totals), OUT/tracks.jsonl (one
line per frame: source, index, timestamp, track ids, boxes, names, counts) and OUT/counts.json
(per line ``in``, ``out`` and the same per class name, summed over sources); with --serve a live
page shows the annotated stream and the counts. Ctrl-C stops cleanly: every file is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import load_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("source", help="stream URL, webcam index or video file")
    p.add_argument("--model", required=True, help="Faster R-CNN / YOLO checkpoint or ultralytics detector")
    p.add_argument("--line", action="append", default=[], metavar="X1,Y1,X2,Y2", help="counting line (repeatable)")
    p.add_argument("--zone", action="append", default=[], metavar="X1,Y1,...", help="occupancy polygon (repeatable)")
    p.add_argument("--tracker", default="bytetrack", choices=("bytetrack", "botsort", "ocsort"),
                   help="ocsort keeps ids (and counts) through occlusions, with appearance for YOLO models")
    p.add_argument("--track-buffer", default=None,
                   help="frames (30) or seconds (2s) a lost track is kept (default: 30 frames, ocsort 3s)")
    p.add_argument("--out", default="runs/count_traffic", help="output folder (default runs/count_traffic)")
    p.add_argument("--serve", metavar="[HOST:]PORT", help="live page with the annotated stream and the counts")
    p.add_argument("--conf", type=float, default=None, help="detector score threshold (default 0.1 while tracking)")
    p.add_argument("--batch", type=int, default=1, help="frames per forward pass (default 1: lowest latency)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--reconnect", type=float, default=10.0, help="seconds to keep reconnecting a dropped stream")
    return p.parse_args(argv)


@dataclass(frozen=True)
class CountSettings:
    """tracker: bytetrack, botsort or ocsort; track_buffer: how long a lost track is kept ("30" frames or
    "1.5s"; None: the tracker's default); serve: HOST:PORT of a live preview page (None: none); conf: detection score threshold
    (None: the model's default); reconnect_s: seconds to keep reconnecting a dropped stream."""

    tracker: str = "bytetrack"
    track_buffer: str | None = None
    serve: str | None = None
    conf: float | None = None
    reconnect_s: float = 10.0


def count(model: Any, source: Any, out: Path, lines: list[str], zones: list[str] = (), *,
          settings: CountSettings = CountSettings()) -> dict[str, Any]:
    """Track and count ``source`` with ``model`` (a :class:`cvapps.Model`); returns the totals
    written to ``out/counts.json``."""
    tracker, track_buffer, serve, conf = settings.tracker, settings.track_buffer, settings.serve, settings.conf
    reconnect_s = settings.reconnect_s
    from cvapps.io.preview import MJPEGServer
    from cvapps.io.sinks import JsonLinesSink, VideoWriterSink, close_all, make_drawer
    from cvapps.structures import Frame

    options: dict[str, Any] = {"track": tracker, "track_buffer": track_buffer, "count_lines": lines, "zones": zones}
    if conf is not None:
        options["conf"] = conf
    options["reconnect_s"] = reconnect_s  # a source option: live sources use it, files ignore it
    out.mkdir(parents=True, exist_ok=True)
    results = model.predict(source, stream=True, **options)  # opens the source now: a bad one fails here
    draw = make_drawer(model.names)
    stem = Path(str(source).split("?")[0]).stem or "stream"
    jsonl = JsonLinesSink(out / "tracks.jsonl", model.names)
    sinks: list[Any] = [VideoWriterSink(out / f"{stem}.mp4", draw), jsonl]
    if serve:
        server = MJPEGServer(serve, draw, name=str(source))
        print(f"live page at {server.url}", file=sys.stderr)
        sinks.append(server)
    last: dict[str, dict[str, Any]] = {}  # the newest counts of each source: its running totals
    completed = False
    try:
        for r in results:
            frame = Frame(r.image, r.source, r.index, r.timestamp, r.stream, r.frame_index)
            for sink in sinks:
                sink.write(frame, r.prediction)
            if r.counts is not None:
                last[r.stream] = r.counts  # per video or stream
        completed = True
    except KeyboardInterrupt:
        completed = True  # stopped by the user: what was processed is written
    finally:
        errors = close_all(sinks, commit=completed)
    if errors:
        raise SystemExit(f"error: {errors[-1]}")
    totals = _totals(last)
    tmp = out / ".counts.json.tmp"
    tmp.write_text(json.dumps(totals, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "counts.json")  # atomically: readers never see half a file
    return totals


def _totals(per_source: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per line ``in`` / ``out`` (and per class name) summed over sources."""
    lines: list[dict[str, Any]] = []
    for counts in per_source.values():
        for k, line in enumerate(counts["lines"]):
            if k == len(lines):
                lines.append({"line": line["line"], "in": 0, "out": 0, "classes": {}})
            total = lines[k]
            total["in"], total["out"] = total["in"] + line["in"], total["out"] + line["out"]
            for name, c in line["classes"].items():
                t = total["classes"].setdefault(name, {"in": 0, "out": 0})
                t["in"], t["out"] = t["in"] + c["in"], t["out"] + c["out"]
    return {"lines": lines, "sources": per_source}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cvapps.errors import CvappsError

    if not args.line and not args.zone:
        print("error: give at least one --line or --zone", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, args.device, args.batch, part="detect")
        out = Path(args.out)  # SOURCE "0" is webcam 0 unless such a file exists (describe_source's rule)
        settings = CountSettings(args.tracker, args.track_buffer, args.serve, args.conf, args.reconnect)
        totals = count(model, args.source, out, args.line, args.zone, settings=settings)
    except CvappsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for k, line in enumerate(totals["lines"], 1):
        print(f"line {k} {line['line']}: in {line['in']}, out {line['out']}")
    print(f"wrote {out / 'counts.json'}, {out / 'tracks.jsonl'} and the annotated video")
    return 0


if __name__ == "__main__":
    sys.exit(main())
