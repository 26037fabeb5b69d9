"""``cvapps export`` (checkpoint -> ONNX file or OpenVINO folder) and ``cvapps merge-json`` (shard outputs ->
one COCO file)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvapps.errors import CvappsError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX or OpenVINO (fp32 / INT8), checked against PyTorch",
                       description="Export a classify, segment (FCN) or yolo checkpoint to ONNX with a dynamic "
                                   "batch axis. Input: float32 images (B, C, S, S) RGB in [0, 1] at the checkpoint's "
                                   "imgsz; outputs: the model's raw predictions. Task, class names and preprocessing "
                                   "are stored in the file's metadata, so `cvapps classify|segment|detect --model "
                                   "FILE.onnx` runs it. The export is compared with PyTorch in onnxruntime "
                                   "(atol 1e-4 on logits, 1e-3 px on YOLO boxes, plus 1e-3 relative). "
                                   "--format openvino writes a folder (model.xml/.bin + metadata.json; pip install "
                                   "\"cvapps[openvino]\") from the same graph, checked in OpenVINO; --int8 quantizes "
                                   "it with NNCF on images from --data and prints fp32 vs INT8 on the val split.")
    p.add_argument("checkpoint", help="a cvapps checkpoint (.pt)")
    p.add_argument("--format", default="onnx", choices=["onnx", "openvino"], help="export format (default onnx)")
    p.add_argument("--out", help="output file (onnx; default: the checkpoint's path with .onnx) or folder "
                                 "(openvino; default: CKPT_openvino/ or CKPT_int8_openvino/ next to it)")
    p.add_argument("--int8", action="store_true", help="openvino: post-training INT8 quantization (NNCF)")
    p.add_argument("--data", metavar="DIR", help="--int8: calibration images / dataset root (default: the "
                                                 "checkpoint's data.root); its val split is scored")
    p.add_argument("--calib", type=int, default=300, metavar="N", help="--int8: calibration images at most (300)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (11..20, default 17)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size at 2 instead of a dynamic axis")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("merge-json", help="merge COCO JSON files of several shards into one",
                       description="Merge COCO files written by `--shard I/N` runs into OUT: either results lists "
                                   "(predictions.json) or dataset files (predictions_coco.json, any COCO dataset). "
                                   "Image ids stay as they are when the shards agree (e.g. --coco-gt ids) and are "
                                   "renumbered where two shards used one id for different images; annotation ids "
                                   "are renumbered 1..N. Inputs are never modified.")
    p.add_argument("out", help="merged output file (.json)")
    p.add_argument("inputs", nargs="+", help="shard files, all results lists or all dataset files")
    p.set_defaults(func=cmd_merge_json)


def cmd_export(args: argparse.Namespace) -> int:
    from cvapps.export import export_onnx
    from cvapps.io.guard import check_writable_target

    if args.out:
        check_writable_target(args.out, inputs=[args.checkpoint])  # never export over the checkpoint
    if args.format == "openvino":
        return _export_openvino(args)
    if args.int8 or args.data:
        raise CvappsError("export: --int8 and --data go with --format openvino")
    report = export_onnx(args.checkpoint, args.out, opset=args.opset, dynamic_batch=not args.static_batch,
                         check=not args.no_check)
    print(report.summary() if not args.no_check else f"exported {report.task} model to {report.path} (not checked)")
    return 0


def _export_openvino(args: argparse.Namespace) -> int:
    from cvapps.export_openvino import OpenVinoExportOptions, export_openvino

    if args.static_batch or args.opset != 17:
        raise CvappsError("export: --static-batch and --opset go with --format onnx")
    options = OpenVinoExportOptions(int8=args.int8, data=args.data, calib=args.calib, check=not args.no_check)
    print(export_openvino(args.checkpoint, args.out, options).summary())
    return 0


def cmd_merge_json(args: argparse.Namespace) -> int:
    from cvapps.formats.merge import merge_files

    out = Path(args.out)
    merged, notes = merge_files(out, args.inputs)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if isinstance(merged, list):
        print(f"merged {len(args.inputs)} results files: {len(merged)} results over "
              f"{len({r['image_id'] for r in merged})} images -> {out}")
    else:
        print(f"merged {len(args.inputs)} dataset files: {len(merged['images'])} images, "
              f"{len(merged['annotations'])} annotations, {len(merged['categories'])} categories -> {out}")
    return 0
