"""``cvapps detect``: Faster R-CNN / YOLO checkpoints (native ultralytics models; the boxes of a multitask one) on any source.

Writes annotated images to OUT (video and stream sources: ``OUT/<stem>.mp4``) and, with
``--save-json``, ``OUT/predictions.json`` (COCO results list) and ``OUT/predictions_coco.json``
(COCO dataset file with scores).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cvapps.cli.analytics import add_analytics_args, apply_analytics
from cvapps.cli.predict import add_common, add_json_args
from cvapps.cli.slicing import load_options
from cvapps.errors import plural


def add_detect_args(p: argparse.ArgumentParser) -> None:
    """``--conf``, ``--iou``, ``--max-det`` (the box postprocess) and ``--no-images`` (detectors and
    multitask models)."""
    p.add_argument("--conf", type=float, default=None, help="minimum score kept (default 0.25; 0.1 with --track)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of class-wise non-maximum suppression (default 0.5)")
    p.add_argument("--max-det", type=int, default=300, help="most detections per image (default 300)")
    p.add_argument("--no-images", action="store_true", help="do not write annotated images")


def check_detect_args(args: argparse.Namespace) -> None:
    """Fill in --conf's default (lower when tracking) and refuse out-of-range box options (the API's
    check: :func:`cvapps.engine.predict.check_options`)."""
    from cvapps.analytics import TRACK_CONF
    from cvapps.engine.predict import check_options

    if args.conf is None:
        args.conf = TRACK_CONF if (getattr(args, "track", None) or getattr(args, "count_line", None)) else 0.25
    check_options({"conf": args.conf, "iou": args.iou, "max_det": args.max_det}, cli=True)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect objects with a Faster R-CNN or YOLO model",
                       description="Detect objects in every image/frame of SOURCE; writes annotated images to OUT "
                                   "and, with --save-json, OUT/predictions.json (COCO results: image_id, "
                                   "category_id, bbox [x, y, w, h] in pixels, score) and OUT/predictions_coco.json "
                                   "(a COCO dataset file whose annotations carry score).")
    add_common(p)
    add_detect_args(p)
    add_json_args(p, "COCO results: image_id, category_id, bbox [x, y, w, h] in pixels, score")
    add_analytics_args(p)
    p.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from cvapps.api import load

    check_detect_args(args)  # bad options fail before the model loads
    model = load(args.model, device=args.device, batch=args.batch, trust=args.trust_model,
                 runtime=getattr(args, "runtime", None), **load_options(args))
    return run_detect(args, model.part("detect"))  # a multitask model gives its boxes; another kind: an error


def run_detect(args: argparse.Namespace, model: Any, masks: bool = False) -> int:
    """``cvapps detect`` with ``model`` (a :class:`cvapps.api.Model`) loaded: a detector, or a whole
    multitask model (``cvapps predict``: its images and video draw masks and boxes, its JSON files
    hold bbox and segmentation annotations under each frame's one image id); ``masks``: also write
    its class-index mask PNGs to OUT/masks/ (unless --no-masks)."""
    from cvapps.cli.predict import common_sinks, exit_code, frame_outputs, print_written, run_common, source_root
    from cvapps.formats.coco import ImageIndex, read_coco_json
    from cvapps.io.sinks import AnnotatedImages, CocoSink, MaskImages, make_drawer

    check_detect_args(args)
    gt = read_coco_json(args.coco_gt) if args.coco_gt else None
    predictor = model.predictor
    out = Path(args.out)
    predictor, analytics_sinks = apply_analytics(args, predictor, out)  # --track, --count-line, --zone
    root = source_root(args)
    images, video, save_json = frame_outputs(args)
    sinks: list[Any] = []
    image_sink = None
    if images:
        image_sink = AnnotatedImages(out, make_drawer(predictor.class_names), root=root)
        sinks.append(image_sink)
    mask_sink = None
    if images and masks and not args.no_masks:
        mask_sink = MaskImages(out / "masks", root=root)  # as `cvapps segment` writes them
        sinks.append(mask_sink)
    json_sink = None
    if save_json:
        index = ImageIndex(root, gt, image_dir="" if images else None)
        json_sink = CocoSink(out / "predictions_coco.json", predictor.class_names, predictor.category_ids,
                             results_path=out / "predictions.json", gt=gt, index=index)
        sinks.append(json_sink)
    counter = _Counter(predictor.class_names)
    sinks += [counter, *analytics_sinks, *common_sinks(args, predictor, video=video, images=False)]  # video/jsonl/show/serve
    report = run_common(args, predictor, sinks, {"conf": args.conf, "iou": args.iou, "max_det": args.max_det})
    print(f"{report.summary()}; detected: {counter.summary() or 'nothing'}")
    if image_sink is not None and image_sink.count:
        print(f"wrote {plural(image_sink.count, 'annotated image')} to {out}")
    if mask_sink is not None and mask_sink.count:
        print(f"wrote {plural(mask_sink.count, 'class-index mask')} to {out / 'masks'}/")
    if json_sink is not None:
        print(f"wrote {json_sink.results_path} and {json_sink.path}")
    print_written([s for s in sinks if s is not json_sink])
    return exit_code(report)


class _Counter:
    """Counts detections per class for the closing summary line."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names, self.counts = class_names, {}

    def write(self, frame, prediction) -> None:
        boxes = prediction.detections  # a multitask model's boxes too (its other parts are not counted)
        if boxes is None:
            return
        for label in boxes.labels.tolist():
            name = self.class_names[label] if 0 <= label < len(self.class_names) else str(label)
            self.counts[name] = self.counts.get(name, 0) + 1

    def close(self) -> None:
        pass

    def summary(self) -> str:
        return ", ".join(f"{n} {c}" for n, c in sorted(self.counts.items(), key=lambda kv: -kv[1]))
