"""``cvapps segment``: run an FCN segmentation checkpoint over images, folders, globs or video."""

from __future__ import annotations

import argparse
from pathlib import Path

from cvapps.cli.predict import add_common, common_sinks, exit_code, print_written, run_common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images/video pixel by pixel with a segmentation checkpoint",
                       description="Segment every image or frame of SOURCE. Writes OUT/overlays/<stem>.jpg "
                                   "(colour overlay), OUT/masks/<stem>.png (class index per pixel, 0 = background; "
                                   "video frames are named <video>_<frame>), and with --save-json "
                                   "OUT/predictions.json (COCO results, compressed RLE).")
    add_common(p)
    p.add_argument("--save-json", action="store_true", help="also write OUT/predictions.json (COCO segm results)")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay images")
    p.add_argument("--no-masks", action="store_true", help="do not write mask PNGs")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    p.set_defaults(func=cmd_segment)


def cmd_segment(args: argparse.Namespace) -> int:
    from cvapps.engine.load import load_model
    from cvapps.errors import CvappsError
    from cvapps.io.segm_sinks import CocoSegmJSON, MaskWriter, OverlayWriter

    if not 0 <= args.alpha <= 1:
        raise CvappsError(f"--alpha must be between 0 and 1, got {args.alpha}")
    out = Path(args.out)
    predictor = load_model(args.model, tasks="segment", device=args.device, batch=args.batch,
                           trust=args.trust_model).predictor()
    sinks: list = []
    if not args.no_overlay:
        sinks.append(OverlayWriter(out / "overlays", predictor.class_names, args.alpha))
    if not args.no_masks:
        sinks.append(MaskWriter(out / "masks"))
    json_sink = None
    if args.save_json:
        json_sink = CocoSegmJSON(out / "predictions.json", predictor.category_ids)
        sinks.append(json_sink)
    if not sinks:
        raise CvappsError("nothing to write: drop --no-overlay or --no-masks, or add --save-json")
    extra = common_sinks(args, predictor)  # --save-video/--save-jsonl/--show/--serve (cli.predict)
    report = run_common(args, predictor, sinks + extra)
    print(report.summary())
    print_written(extra)
    for sub in ("overlays", "masks"):
        if (out / sub).is_dir() and report.processed:
            print(f"wrote {out / sub}/")
    if json_sink is not None:
        print(f"wrote {json_sink.path} ({len(json_sink.entries)} entries)")
    return exit_code(report)
