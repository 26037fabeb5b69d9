#!/usr/bin/env python
"""Live webcam or stream with any task, in a preview window or a web page.

    python pipelines/webcam.py 0 --model det.pt                 # window if there is a display
    python pipelines/webcam.py rtsp://cam/stream --model seg.pt --serve 0.0.0.0:8080

Keeps only the newest frame (live latency stays low; dropped frames are counted) unless --buffer.
Ctrl-C, or 'q' in the window, stops; --save-video records the annotated stream.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import load_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("source", nargs="?", default="0", help="webcam index (default 0) or stream URL")
    p.add_argument("--model", required=True, help="any cvapps checkpoint (classify, segment, detect) or ultralytics model")
    p.add_argument("--serve", metavar="[HOST:]PORT", help="web page with the live stream (default host 127.0.0.1)")
    p.add_argument("--show", action="store_true", help="preview window (default when a display exists and no --serve)")
    p.add_argument("--save-video", metavar="FILE.mp4", help="also record the annotated stream")
    p.add_argument("--buffer", action="store_true", help="keep every frame instead of only the newest")
    p.add_argument("--reconnect", type=float, default=10.0, help="seconds to keep reconnecting a dropped stream")
    p.add_argument("--conf", type=float, default=0.25, help="detector score threshold (default 0.25)")
    p.add_argument("--batch", type=int, default=1, help="frames per forward pass (default 1: lowest latency)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from cvapps.engine.runner import run_source
    from cvapps.errors import CvappsError
    from cvapps.io.preview import MJPEGServer, PreviewWindow, display_available
    from cvapps.io.sinks import VideoWriterSink, make_drawer
    from cvapps.io.sources import SourceOptions

    try:
        model = load_model(args.model, args.device, args.batch)
        draw = make_drawer(model.names)
        sinks = []
        if args.show or (not args.serve and display_available()[0]):
            sinks.append(PreviewWindow(draw))
        if args.serve or not sinks:
            server = MJPEGServer(args.serve or "127.0.0.1:8080", draw)
            print(f"live preview at {server.url}", file=sys.stderr)
            sinks.append(server)
        if args.save_video:
            sinks.append(VideoWriterSink(Path(args.save_video), draw))
        options = {"conf": args.conf} if "conf" in model.loaded.task.postprocess_options else {}
        # "0" is webcam 0 unless such a file exists: the one rule of cvapps.io.sources.describe_source
        read = SourceOptions(buffer=True if args.buffer else None, reconnect_s=args.reconnect)
        report = run_source(model.predictor, args.source, sinks, progress=False, options=options, source_options=read)
    except CvappsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    print(report.timing_report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
