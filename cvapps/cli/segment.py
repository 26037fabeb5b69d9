"""``cvapps segment``: run an FCN segmentation checkpoint (or a multitask one's masks) over images, folders, globs or video."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cvapps.cli.predict import (add_common, add_json_args, common_sinks, exit_code, frame_outputs, print_written,
                                run_common, source_root)
from cvapps.cli.slicing import load_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images/video pixel by pixel with a segmentation checkpoint",
                       description="Segment every image or frame of SOURCE. For image sources writes "
                                   "OUT/overlays/<path>.jpg (colour overlay) and OUT/masks/<path>.png (class index "
                                   "per pixel, 0 = background), mirroring the source folder; for video and stream "
                                   "sources OUT/<stem>.mp4 (per-frame files with --save-images, named "
                                   "<video>_<frame>). With --save-json OUT/predictions.json (COCO segm results, "
                                   "compressed RLE) and OUT/predictions_coco.json (COCO dataset file).")
    add_common(p)
    add_json_args(p, "COCO segm results, compressed RLE")
    add_segment_args(p)
    p.set_defaults(func=cmd_segment)


def add_segment_args(p: argparse.ArgumentParser) -> None:
    """``--no-overlay``, ``--no-masks``, ``--alpha``: the per-image outputs of a segmenter."""
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay images")
    p.add_argument("--no-masks", action="store_true", help="do not write mask PNGs")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")


def check_segment_args(args: argparse.Namespace) -> None:
    from cvapps.errors import CvappsError

    if not 0 <= args.alpha <= 1:
        raise CvappsError(f"--alpha must be between 0 and 1, got {args.alpha}")


def cmd_segment(args: argparse.Namespace) -> int:
    from cvapps.api import load

    check_segment_args(args)  # bad options fail before the model loads
    model = load(args.model, device=args.device, batch=args.batch, trust=args.trust_model,
                 runtime=getattr(args, "runtime", None), **load_options(args))
    return run_segment(args, model.part("segment"))  # a multitask model gives its masks; another kind: an error


def run_segment(args: argparse.Namespace, model: Any) -> int:
    """``cvapps segment`` with ``model`` (a :class:`cvapps.api.Model` giving masks) already loaded."""
    from cvapps.errors import CvappsError
    from cvapps.formats.coco import ImageIndex, read_coco_json
    from cvapps.io.sinks import CocoSink, MaskImages, OverlayImages

    check_segment_args(args)
    out = Path(args.out)
    root = source_root(args)
    images, video, save_json = frame_outputs(args)
    predictor = model.predictor
    sinks: list = []
    overlays = images and not args.no_overlay
    if overlays:
        sinks.append(OverlayImages(out / "overlays", predictor.class_names, args.alpha, root=root))
    if images and not args.no_masks:
        sinks.append(MaskImages(out / "masks", root=root))
    json_sink = None
    gt = read_coco_json(args.coco_gt) if args.coco_gt else None
    if save_json:
        index = ImageIndex(root, gt, image_dir="overlays" if overlays else None)
        json_sink = CocoSink(out / "predictions_coco.json", predictor.class_names, predictor.category_ids,
                             results_path=out / "predictions.json", gt=gt, index=index)
        sinks.append(json_sink)
    extra = common_sinks(args, predictor, video=video, images=False)  # video/jsonl/show/serve (cli.predict)
    if not sinks and not extra:
        raise CvappsError("nothing to write: drop --no-overlay or --no-masks, or add --save-json")
    report = run_common(args, predictor, sinks + extra)
    print(report.summary())
    print_written(extra)
    for sub in ("overlays", "masks"):
        if (out / sub).is_dir() and report.processed:
            print(f"wrote {out / sub}/")
    if json_sink is not None:
        print(f"wrote {json_sink.results_path} ({len(json_sink.results)} results) and {json_sink.path}")
    return exit_code(report)
