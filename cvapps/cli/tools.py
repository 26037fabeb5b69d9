"""``cvapps export`` (checkpoint -> ONNX) and ``cvapps merge-json`` (shard outputs -> one COCO file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cvapps.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (dynamic batch), checked with onnxruntime",
                       description="Export a classify, segment (FCN) or yolo checkpoint to ONNX with a dynamic "
                                   "batch axis. Input: float32 images (B, C, S, S) RGB in [0, 1] at the checkpoint's "
                                   "imgsz; outputs: the model's raw predictions. Task, class names and preprocessing "
                                   "are stored in the file's metadata, so `cvapps classify|segment|detect --model "
                                   "FILE.onnx` runs it. The export is compared with PyTorch in onnxruntime "
                                   "(atol 1e-4 on logits, 1e-3 px on YOLO boxes, plus 1e-3 relative).")
    p.add_argument("checkpoint", help="a cvapps checkpoint (.pt)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (only onnx)")
    p.add_argument("--out", help="output file (default: the checkpoint's path with .onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (11..20, default 17)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size at 2 instead of a dynamic axis")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch parity check")
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
    report = export_onnx(args.checkpoint, args.out, opset=args.opset, dynamic_batch=not args.static_batch,
                         check=not args.no_check)
    print(report.summary() if not args.no_check else f"exported {report.task} model to {report.path} (not checked)")
    return 0


def cmd_merge_json(args: argparse.Namespace) -> int:
    from cvapps.checkpoint import atomic_write_text
    from cvapps.io.guard import check_writable_target

    out = Path(args.out)
    check_writable_target(out, inputs=args.inputs)  # before reading: the output may not be an input
    merged, notes = merge_coco([_read_json(p) for p in args.inputs], [str(p) for p in args.inputs])
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    atomic_write_text(out, json.dumps(merged))
    if isinstance(merged, list):
        print(f"merged {len(args.inputs)} results files: {len(merged)} results over "
              f"{len({r['image_id'] for r in merged})} images -> {out}")
    else:
        print(f"merged {len(args.inputs)} dataset files: {len(merged['images'])} images, "
              f"{len(merged['annotations'])} annotations, {len(merged['categories'])} categories -> {out}")
    return 0


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"merge-json: {path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"merge-json: {path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"merge-json: {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def merge_coco(docs: list[Any], names: list[str]) -> tuple[Any, list[str]]:
    """Merge COCO results lists or COCO dataset dicts; returns ``(merged, notes)``.

    Results lists (``[{"image_id", "category_id", ...}]``): concatenated; if two files use the same
    image id (each shard numbered its images 1..N) the later file's ids are shifted past the
    largest id so far. Dataset files: images with the same ``file_name`` are one image; an image
    keeps its id unless another file name already took it (then it gets the next free id);
    annotations get ids 1..N and follow their image; categories must agree by id.
    Raises DataError naming the file and entry for anything else.
    """
    if not docs:
        raise DataError("merge-json: no input files")
    kinds = {type(d) for d in docs}
    if kinds == {list}:
        return _merge_results(docs, names)
    if kinds == {dict}:
        return _merge_datasets(docs, names)
    bad = [n for d, n in zip(docs, names) if not isinstance(d, (list, dict))]
    if bad:
        raise DataError(f"merge-json: {bad[0]}: expected a COCO results list or dataset object, "
                        f"got {type(docs[names.index(bad[0])]).__name__}")
    raise DataError("merge-json: inputs mix results lists and dataset files; merge each kind separately")


def _check_entries(items: Any, name: str, what: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise DataError(f"merge-json: {name}: {what!r} should be a list, got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"merge-json: {name}: {what}[{i}] is not an object")
        for key in keys:
            if key not in item:
                raise DataError(f"merge-json: {name}: {what}[{i}] lacks {key!r}")
            if key.endswith("id") and (not isinstance(item[key], int) or isinstance(item[key], bool)):
                raise DataError(f"merge-json: {name}: {what}[{i}].{key} should be an integer, got {item[key]!r}")
    return items


def _merge_results(docs: list[list], names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    merged: list[dict[str, Any]] = []
    used: set[int] = set()
    notes: list[str] = []
    for doc, name in zip(docs, names):
        items = _check_entries(doc, name, "results", ("image_id", "category_id"))
        ids = {r["image_id"] for r in items}
        shift = 0
        if ids & used:
            shift = max(used)
            notes.append(f"{name}: image ids overlap an earlier file (per-shard numbering); shifted by {shift}. "
                         "Results lists carry no file names: merge the predictions_coco.json files to keep them")
        merged += [{**r, "image_id": r["image_id"] + shift} for r in items]
        used |= {i + shift for i in ids}
    if any("id" in r for r in merged):
        merged = [{**r, "id": i} for i, r in enumerate(merged, 1)]
    return merged, notes


def _merge_datasets(docs: list[dict], names: list[str]) -> tuple[dict[str, Any], list[str]]:
    categories: dict[int, dict[str, Any]] = {}
    images: list[dict[str, Any]] = []
    by_file: dict[str, int] = {}
    taken: dict[int, str] = {}  # image id -> file_name
    annotations: list[dict[str, Any]] = []
    notes: list[str] = []
    renumbered = 0
    for doc, name in zip(docs, names):
        for key in ("images", "annotations"):
            if key not in doc:
                raise DataError(f"merge-json: {name}: not a COCO dataset file (no {key!r} list)")
        for c in _check_entries(doc.get("categories", []), name, "categories", ("id", "name")):
            known = categories.setdefault(c["id"], c)
            if known["name"] != c["name"]:
                raise DataError(f"merge-json: {name}: category id {c['id']} is {c['name']!r} here but "
                                f"{known['name']!r} in an earlier file")
        local: dict[int, int] = {}
        for im in _check_entries(doc["images"], name, "images", ("id", "file_name")):
            file_name = str(im["file_name"])
            if im["id"] in local:
                raise DataError(f"merge-json: {name}: image id {im['id']} appears twice")
            if file_name in by_file:  # the same image in two files (e.g. overlapping shards)
                local[im["id"]] = by_file[file_name]
                continue
            new_id = im["id"]
            if new_id in taken:
                new_id = max(taken) + 1
                renumbered += 1
            taken[new_id] = file_name
            by_file[file_name] = local[im["id"]] = new_id
            images.append({**im, "id": new_id})
        for i, a in enumerate(_check_entries(doc["annotations"], name, "annotations", ("image_id",))):
            if a["image_id"] not in local:
                raise DataError(f"merge-json: {name}: annotations[{i}] refers to image {a['image_id']}, "
                                "which is not in its images")
            annotations.append({**a, "id": len(annotations) + 1, "image_id": local[a["image_id"]]})
    if renumbered:
        notes.append(f"{renumbered} images got new ids (their id was used by another file name in an earlier file)")
    base = dict(docs[0])
    base.update(images=images, annotations=annotations, categories=sorted(categories.values(), key=lambda c: c["id"]))
    return base, notes
