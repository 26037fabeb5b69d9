#!/usr/bin/env python
"""Detection and segmentation overlays on one video, plus COCO JSON.

    python pipelines/annotate_video.py VIDEO --detector det.pt --segmenter seg.pt --out runs/annotate
    python pipelines/annotate_video.py VIDEO --model multitask.pt --out runs/annotate

Writes OUT/<video>.mp4 (same fps and size as the input; masks blended, boxes drawn on top) and
OUT/detections_coco.json / OUT/segmentation_coco.json (one COCO image per frame, file_name
``video.mp4#frame=000123``). Either model may be left out. With one multitask model (``--model``)
a single forward per frame gives both, and OUT/multitask_coco.json holds the boxes and the class
masks of each frame under its one image id.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import Chain, Pick, load_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("video", help="video file (or any cvapps source)")
    p.add_argument("--detector", help="Faster R-CNN / YOLO checkpoint (or ultralytics model file)")
    p.add_argument("--segmenter", help="segmentation checkpoint")
    p.add_argument("--model", help="a multitask checkpoint: boxes and masks from one forward (instead of the two)")
    p.add_argument("--out", default="runs/annotate", help="output folder (default runs/annotate)")
    p.add_argument("--conf", type=float, default=0.25, help="detector score threshold (default 0.25)")
    p.add_argument("--batch", type=int, default=8, help="frames per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--vid-stride", type=int, default=1, help="use every N-th frame")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not (args.detector or args.segmenter or args.model):
        p.error("give --detector, --segmenter or both, or --model (multitask)")
    if args.model and (args.detector or args.segmenter):
        p.error("--model (multitask) replaces --detector and --segmenter; give one or the others")
    return args


@dataclass(frozen=True)
class AnnotateSettings:
    """conf: detection score threshold; vid_stride: use every N-th frame; progress: show a bar."""

    conf: float = 0.25
    vid_stride: int = 1
    progress: bool = True


def annotate(source: Any, out: Path, detector: Any = None, segmenter: Any = None, *, multitask: Any = None,
             settings: AnnotateSettings = AnnotateSettings()) -> Any:
    """Run the models (:class:`cvapps.Model`) over ``source`` into an annotated mp4 and COCO JSON
    files; returns the RunReport. ``multitask``: one multitask model used instead of the two."""
    conf = settings.conf

    from cvapps.engine.runner import run_source
    from cvapps.io.sinks import CocoSink, VideoWriterSink, draw_prediction
    from cvapps.io.sources import SourceOptions

    stem = Path(str(source)).stem or "video"
    sinks: list[Any] = []
    if multitask is not None:  # one backbone pass per frame; its prediction carries boxes and mask
        predictor, names, options = multitask.predictor, multitask.names, {"conf": conf}
        draw = lambda image, pred: draw_prediction(image, pred, names)  # noqa: E731
        sinks.append(CocoSink(out / "multitask_coco.json", names, multitask.category_ids))
    elif detector is not None and segmenter is not None:
        predictor: Any = Chain(segmenter.predictor, detector.predictor)
        options: dict[str, Any] = {"conf": conf}

        def draw(image, pred):
            mask, dets = pred
            return draw_prediction(draw_prediction(image, mask, segmenter.names), dets, detector.names)

        sinks.append(Pick(CocoSink(out / "segmentation_coco.json", segmenter.names, segmenter.category_ids), 0))
        sinks.append(Pick(CocoSink(out / "detections_coco.json", detector.names, detector.category_ids), 1))
    else:
        model = detector or segmenter
        predictor, names = model.predictor, model.names
        options = {"conf": conf} if detector is not None else {}
        draw = lambda image, pred: draw_prediction(image, pred, names)  # noqa: E731
        kind = "detections" if detector is not None else "segmentation"
        sinks.append(CocoSink(out / f"{kind}_coco.json", names, model.category_ids))
    sinks.insert(0, VideoWriterSink(out / f"{stem}.mp4", draw))
    return run_source(predictor, source, sinks, progress=settings.progress, options=options,
                      source_options=SourceOptions(vid_stride=settings.vid_stride))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from cvapps.errors import CvappsError

    try:
        detector = load_model(args.detector, args.device, args.batch, part="detect") if args.detector else None
        segmenter = load_model(args.segmenter, args.device, args.batch, part="segment") if args.segmenter else None
        # one model whose every prediction carries boxes and a mask (a multitask one)
        multitask = (load_model(args.model, args.device, args.batch, needs=("detections", "semantic"))
                     if args.model else None)
        settings = AnnotateSettings(args.conf, args.vid_stride, not args.quiet)
        report = annotate(args.video, Path(args.out), detector, segmenter, multitask=multitask, settings=settings)
    except CvappsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    print(report.timing_report())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
