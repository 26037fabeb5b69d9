"""``cvapps predict``: any checkpoint, whatever its task, on any source.

The model's task picks what runs, with the outputs of its own command: a classifier as ``cvapps
classify``, a segmenter as ``cvapps segment``, a detector (Faster R-CNN, YOLO, native ultralytics)
as ``cvapps detect``, and a multitask model whole: one forward per batch gives boxes, mask and
present classes; the annotated images (``OUT/<path>``) and video (``OUT/<stem>.mp4``) draw the mask
and the boxes, ``OUT/masks/<path>.png`` holds each image's class-index mask (as ``cvapps segment``
writes it; not with ``--no-masks``), and ``--save-json`` writes ``OUT/predictions.json`` (bbox and segm results) and
``OUT/predictions_coco.json`` with each frame's boxes and class masks under its one image id.
An option of another task than the model's is refused in one line.
"""

from __future__ import annotations

import argparse

from cvapps.cli.analytics import add_analytics_args
from cvapps.cli.detect import add_detect_args, check_detect_args, run_detect
from cvapps.cli.predict import add_classify_args, add_common, add_json_args, check_classify_args, run_classify
from cvapps.cli.segment import add_segment_args, check_segment_args, run_segment
from cvapps.cli.slicing import load_options
from cvapps.errors import CvappsError
from cvapps.tasks.base import Task

#: The options (dests) only some models take; which, each model's task declares (see task_options).
TASK_OPTIONS = ("topk", "alpha", "no_overlay", "no_masks", "conf", "iou", "max_det", "no_images", "track",
                "track_buffer", "count_line", "zone", "save_json", "coco_gt")
TRACK_OPTIONS = ("track", "track_buffer", "count_line", "zone")


def task_options(task: Task) -> set[str]:
    """The :data:`TASK_OPTIONS` a model of ``task`` takes: its postprocess options, those of the
    outputs its prediction parts get (boxes: annotated images; masks: mask PNGs, and `cvapps
    segment`'s overlays when there are no boxes to draw them with; both: COCO JSON) and, for a task
    whose boxes are tracked, the tracking and counting options."""
    taken = set(task.postprocess_options)
    if "detections" in task.parts:
        taken |= {"no_images", "save_json", "coco_gt"}
    if "semantic" in task.parts:
        taken |= {"no_masks", "save_json", "coco_gt"}
        if "detections" not in task.parts:
            taken |= {"alpha", "no_overlay"}
    if task.tracks:
        taken |= set(TRACK_OPTIONS)
    return taken & set(TASK_OPTIONS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run any checkpoint (classify, segment, detect or multitask) on a source",
                       description="Run the model on every image/frame of SOURCE with the outputs of its task's "
                                   "command (classify, segment or detect); a multitask model runs whole: annotated "
                                   "images/video draw its mask and boxes, OUT/masks/ holds its class-index mask PNGs, and --save-json writes OUT/predictions.json "
                                   "(bbox and segm results) and OUT/predictions_coco.json with each frame's boxes "
                                   "and class masks under one image id. Task options (--topk: classify; --alpha, "
                                   "--no-overlay: segment; --no-masks: segment and multitask; --conf, --iou, --max-det, --no-images, "
                                   "--save-json, --coco-gt: detect and multitask, the last two also segment; "
                                   "--track, --count-line, --zone: detect) are refused for other tasks.")
    add_common(p)
    add_classify_args(p)
    add_segment_args(p)
    add_detect_args(p)
    add_json_args(p, "COCO results: bbox [x, y, w, h] in pixels and/or segm RLE, with score")
    add_analytics_args(p)
    p.set_defaults(func=cmd_predict, option_defaults={dest: p.get_default(dest) for dest in TASK_OPTIONS})


def cmd_predict(args: argparse.Namespace) -> int:
    from cvapps.api import load

    # options set away from their defaults (one given at its default value changes nothing, so passes)
    given = [dest for dest, default in args.option_defaults.items() if getattr(args, dest) != default]
    check_segment_args(args)  # bad values fail before the model loads
    check_detect_args(args)
    check_classify_args(args)
    model = load(args.model, device=args.device, batch=args.batch, trust=args.trust_model,
                 runtime=getattr(args, "runtime", None), **load_options(args))
    task = model.loaded.task
    taken = task_options(task)
    wrong = ["--" + dest.replace("_", "-") for dest in given if dest not in taken]
    if wrong:
        raise CvappsError(f"{', '.join(wrong)}: not an option for a {model.task} model ({args.model})")
    # the command whose outputs its predictions get: boxes (with a multitask model's masks), masks, labels
    if "detections" in task.parts:
        return run_detect(args, model, masks="semantic" in task.parts)
    if "semantic" in task.parts:
        return run_segment(args, model)
    if "classification" in task.parts:
        return run_classify(args, model)
    raise CvappsError(f"cvapps predict does not run {model.task} models ({args.model})")
