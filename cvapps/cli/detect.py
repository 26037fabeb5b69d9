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
from cvapps.cli.predict import add_common

DETECTION_TASKS = ("faster_rcnn", "yolo", "ultralytics")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect objects with a Faster R-CNN or YOLO model",
                       description="Detect objects in every image/frame of SOURCE; writes annotated images to OUT "
                                   "and, with --save-json, OUT/predictions.json (COCO results: image_id, "
                                   "category_id, bbox [x, y, w, h] in pixels, score) and OUT/predictions_coco.json "
                                   "(a COCO dataset file whose annotations carry score).")
    add_common(p)
    p.add_argument("--conf", type=float, default=None, help="minimum score kept (default 0.25; 0.1 with --track)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of class-wise non-maximum suppression (default 0.5)")
    p.add_argument("--max-det", type=int, default=300, help="most detections per image (default 300)")
    p.add_argument("--save-json", action="store_true", help="also write predictions.json and predictions_coco.json (the default for video and stream sources)")
    p.add_argument("--coco-gt", metavar="FILE",
                   help="COCO dataset file whose image ids (matched by file_name) and category ids (matched "
                        "by name) the JSON files use, so COCOeval runs on the pair directly; implies --save-json")
    p.add_argument("--no-images", action="store_true", help="do not write annotated images")
    add_analytics_args(p)
    p.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from cvapps.cli.predict import common_sinks, exit_code, frame_outputs, print_written, run_common, source_root
    from cvapps.analytics import TRACK_CONF
    from cvapps.api import load
    from cvapps.errors import CvappsError
    from cvapps.formats.coco import ImageIndex, read_coco_json
    from cvapps.io.sinks import AnnotatedImages, CocoSink, make_drawer

    if args.conf is None:
        args.conf = TRACK_CONF if (args.track or args.count_line) else 0.25
    if not 0 <= args.conf <= 1 or not 0 < args.iou <= 1 or args.max_det < 1:
        raise CvappsError("--conf must be in [0, 1], --iou in (0, 1] and --max-det >= 1")
    gt = read_coco_json(args.coco_gt) if args.coco_gt else None
    model = load(args.model, tasks=(*DETECTION_TASKS, "multitask"), device=args.device, batch=args.batch, trust=args.trust_model)
    predictor = model.part("detect").predictor  # a multitask model gives its boxes
    out = Path(args.out)
    predictor, analytics_sinks = apply_analytics(args, predictor, out)  # --track, --count-line, --zone
    root = source_root(args.source)
    images, video, save_json = frame_outputs(args)
    sinks: list[Any] = []
    image_sink = None
    if images:
        image_sink = AnnotatedImages(out, make_drawer(predictor.class_names), root=root)
        sinks.append(image_sink)
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
    if image_sink is not None:
        print(f"wrote {image_sink.count} annotated images to {out}")
    if json_sink is not None:
        print(f"wrote {json_sink.results_path} and {json_sink.path}")
    print_written([s for s in sinks if s is not json_sink])
    return exit_code(report)


class _Counter:
    """Counts detections per class for the closing summary line."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names, self.counts = class_names, {}

    def write(self, frame, prediction) -> None:
        for label in prediction.labels.tolist():
            name = self.class_names[label] if 0 <= label < len(self.class_names) else str(label)
            self.counts[name] = self.counts.get(name, 0) + 1

    def close(self) -> None:
        pass

    def summary(self) -> str:
        return ", ".join(f"{n} {c}" for n, c in sorted(self.counts.items(), key=lambda kv: -kv[1]))
