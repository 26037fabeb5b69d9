"""``cvapps data synth|check|convert``: sample data and dataset tools."""

from __future__ import annotations

import argparse

# The layouts of cvapps.formats.layouts.LAYOUTS (named here so building the parser imports no readers).
LAYOUT_NAMES = ("coco", "yolo", "voc", "cvat", "labelme")


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="make sample data, check and convert datasets",
                          description="Dataset tools: synth (generate the shapes dataset), check, convert.")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser("synth", help="generate the synthetic shapes dataset",
                        description="Generate circles/squares/triangles on textured backgrounds in every "
                                    "layout cvapps reads: COCO JSON, masks, YOLO txt, class folders and a video.")
    p.add_argument("out", help="output folder")
    p.add_argument("--train", type=int, default=120, help="detection/segmentation train images (default 120)")
    p.add_argument("--val", type=int, default=40, help="val images (default 40)")
    p.add_argument("--imgsz", type=int, default=160, help="image side in pixels (default 160)")
    p.add_argument("--video-frames", type=int, default=240, help="frames in the sample video (default 240)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--video-only", action="store_true",
                   help="write only the moving-shapes video to OUT: shapes.mp4, shapes.json and gt.txt "
                        "(MOT Challenge tracking ground truth)")
    p.add_argument("--occlusion", action="store_true",
                   help="with --video-only: shapes that cross paths, hide each other and leave and re-enter the "
                        "frame; also writes crossings.json (true crossings of the middle line). Without it: a "
                        "YOLO-txt detection dataset of --train / --val frames of such videos (other seeds than "
                        "the videos), to train a detector that separates overlapping shapes")
    p.set_defaults(func=cmd_synth)

    p = dsub.add_parser("check", help="validate a detection dataset (COCO, YOLO txt, VOC, CVAT or LabelMe layout)",
                        description="Check every split of ROOT (COCO: annotations/<split>.json + images/<split>/; "
                                    "YOLO: labels/<split>/ + data.yaml; Pascal VOC: Annotations/ + JPEGImages/ or an "
                                    ".xml next to each image; CVAT for images 1.1: annotations.xml + images/; "
                                    "LabelMe: a .json next to each image), print the layout detected and a "
                                    "report: missing or unreadable "
                                    "images, boxes outside the image (clamped), zero-area boxes (dropped), unknown "
                                    "category ids, duplicate ids, file_name paths escaping ROOT (rejected). "
                                    "Training applies the same rules. Exit code 1 if anything was found.")
    p.add_argument("root", help="dataset root folder")
    p.add_argument("--split", action="append", help="check only this split (repeatable; default: all)")
    p.add_argument("--layout", choices=("auto", *LAYOUT_NAMES), default="auto", help="dataset layout (default auto)")
    p.add_argument("--max-lines", type=int, default=50, help="problem lines shown per split (default 50)")
    p.set_defaults(func=cmd_check)

    p = dsub.add_parser("convert", help="convert a detection dataset between COCO, YOLO txt, VOC, CVAT and LabelMe",
                        description="Write ROOT's dataset (layout detected, or --layout) in another layout: coco "
                                    "(annotations/<split>.json), yolo (labels/<split>/*.txt + data.yaml), voc "
                                    "(Annotations/, JPEGImages/, ImageSets/Main/; next to each image without --out), "
                                    "cvat (annotations.xml), labelme (a .json next to each image). Class order and "
                                    "category ids are kept; boxes pass the data check rules on the way.")
    p.add_argument("root", help="dataset root folder")
    p.add_argument("--to", choices=LAYOUT_NAMES, required=True, help="target layout")
    p.add_argument("--layout", choices=("auto", *LAYOUT_NAMES), default="auto", help="source layout (default auto)")
    p.add_argument("--out", help="output root (default: ROOT, next to the source files); images are copied there")
    p.add_argument("--split", action="append", help="convert only this split (repeatable; default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace existing label/annotation files")
    p.set_defaults(func=cmd_convert)


def cmd_check(args: argparse.Namespace) -> int:
    from cvapps.data.check import LAYOUTS, check_dataset, detect_layout

    layout = detect_layout(args.root) if args.layout == "auto" else args.layout
    print(f"layout: {layout} ({LAYOUTS[layout]})")
    reports = check_dataset(args.root, args.split, layout=args.layout, read_images=True)
    for report in reports:
        print(report.text(args.max_lines))
    return 0 if all(r.ok for r in reports) else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cvapps.data.convert import convert_dataset, input_folders
    from cvapps.io.guard import check_out_dir

    if args.out and Path(args.out).resolve() != Path(args.root).resolve():
        # a separate output root may not lie inside the source's images or annotations
        check_out_dir(args.out, folders=input_folders(args.root))
    for split in convert_dataset(args.root, args.to, args.out, args.split, overwrite=args.overwrite,
                                 layout=args.layout):
        print(f"converted {split.layout} {split.report.summary()}")
    print(f"wrote the {args.to} layout to {args.out or args.root}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from cvapps.data.synth import SynthSpec, generate_shapes, generate_video

    if args.video_only and args.occlusion:
        from cvapps.data.synth_occlusion import generate_occlusion_video

        out = generate_occlusion_video(args.out, frames=args.video_frames, seed=args.seed)
        print(f"wrote {out}/shapes.mp4, shapes.json, gt.txt and crossings.json")
        return 0
    if args.occlusion:
        from cvapps.data.synth_occlusion import generate_occlusion_dataset

        out = generate_occlusion_dataset(args.out, train=args.train, val=args.val, seed=args.seed)
        print(f"wrote a YOLO-txt detection dataset of occlusion-video frames to {out} "
              f"({args.train} train, {args.val} val)")
        return 0
    if args.video_only:
        print(f"wrote {generate_video(args.out, frames=args.video_frames, seed=args.seed)}/shapes.mp4, "
              "shapes.json and gt.txt")
        return 0
    spec = SynthSpec(n_train=args.train, n_val=args.val, imgsz=args.imgsz, video_frames=args.video_frames)
    root = generate_shapes(args.out, spec, seed=args.seed)
    print(f"wrote shapes dataset to {root}")
    return 0
