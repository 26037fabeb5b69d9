"""Tracking and counting options of ``cvapps detect`` (see :mod:`cvapps.analytics`).

``add_analytics_args(parser)`` adds ``--track``, ``--track-buffer``, ``--count-line`` and ``--zone``;
``apply_analytics(args, predictor, out)`` returns the predictor to run (wrapped when any is asked
for) and the sinks they add: ``OUT/counts.json`` and ``OUT/tracks/`` (MOT files).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_analytics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--track", nargs="?", const="bytetrack", default=None, choices=("bytetrack", "botsort", "ocsort"),
                   help="track objects over frames (default tracker: bytetrack; bytetrack/botsort: ultralytics' "
                        "trackers with their default YAML; ocsort: cvapps' occlusion-robust tracker, with "
                        "appearance from the detector's backbone for YOLO models): track ids on the annotated frames (with trails), in the JSON lines "
                        "(track_ids), the COCO file (track_id) and OUT/tracks/<video>.txt (MOT); --conf then "
                        "defaults to 0.1")
    p.add_argument("--track-buffer", default=None, metavar="N|Ns",
                   help="how long a lost track is kept: frames (30) or seconds (2s); default 30 frames for "
                        "bytetrack/botsort, 3s for ocsort; a stream outage shorter than this keeps every track id")
    p.add_argument("--count-line", action="append", default=[], metavar="X1,Y1,X2,Y2",
                   help="count tracks crossing this line (pixels; repeatable): in/out totals and per class on the "
                        "frames, in the JSON lines and in OUT/counts.json; turns on --track. Needs the supervision "
                        "extra")
    p.add_argument("--zone", action="append", default=[], metavar="X1,Y1,X2,Y2,X3,Y3,...",
                   help="count objects inside this polygon in every frame (pixels; repeatable); needs the "
                        "supervision extra")


def apply_analytics(args: argparse.Namespace, predictor: Any, out: Path) -> tuple[Any, list[Any]]:
    """``(predictor to run, extra sinks)`` for the tracking/counting options in ``args``."""
    from cvapps.analytics import AnalyticsPredictor, CountsFile, make_analytics
    from cvapps.io.sinks.mot import MotTracksSink

    analytics = make_analytics(predictor.class_names, track=args.track, track_buffer=args.track_buffer,
                               count_lines=args.count_line, zones=args.zone)
    if analytics is None:
        return predictor, []
    sinks: list[Any] = []
    if analytics.tracker is not None:
        sinks.append(MotTracksSink(out / "tracks", predictor.class_names))
    if analytics.counter is not None:
        sinks.append(CountsFile(out / "counts.json", analytics.counter))
    return AnalyticsPredictor(predictor, analytics), sinks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track-eval", help="score tracks (MOT file) against ground truth: HOTA, IDF1, MOTA",
                       description="Score a MOT-format track file (OUT/tracks/<video>.txt of `cvapps detect --track`) "
                                   "against MOT ground truth (gt.txt) with TrackEval's HOTA, IDF1 and MOTA "
                                   "(motmetrics when TrackEval is not installed: no HOTA).")
    p.add_argument("pred", help="predicted tracks, MOT text file")
    p.add_argument("gt", help="ground truth, MOT text file (gt.txt)")
    p.add_argument("--min-visibility", type=float, default=0.0, metavar="V",
                   help="ground truth boxes less visible than this are don't-care (default 0: all count)")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    p.set_defaults(func=cmd_track_eval)


def cmd_track_eval(args: argparse.Namespace) -> int:
    import json

    from cvapps.analytics.track_eval import (
        evaluate_files,  # heavy (scipy): only when this command runs
    )

    scores = evaluate_files(args.pred, args.gt, args.min_visibility)
    print(json.dumps(scores.to_json()) if args.json else scores.line())
    return 0
