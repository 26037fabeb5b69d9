"""``cvapps data synth|check|convert``: sample data and dataset tools."""

from __future__ import annotations

import argparse


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
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from cvapps.data.synth import generate_shapes

    root = generate_shapes(args.out, n_train=args.train, n_val=args.val, imgsz=args.imgsz,
                           video_frames=args.video_frames, seed=args.seed)
    print(f"wrote shapes dataset to {root}")
    return 0
