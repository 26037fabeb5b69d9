"""Merging COCO files written by ``--shard I/N`` runs (``cvapps merge-json``): results lists or dataset
files. :func:`merge_files` checks the paths (the output is never an input, no input twice, the output
is a writable file), reads each input with the one JSON reader (NaN/Infinity and too-deep nesting
refused) and writes the merged file atomically; :func:`merge_coco` merges documents in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvapps.checkpoint import atomic_write_text
from cvapps.errors import DataError
from cvapps.formats.coco import dumps, read_json


def merge_files(out: str | Path, inputs: list[str | Path]) -> tuple[Any, list[str]]:
    """Merge ``inputs`` into ``out``; returns ``(merged, notes)``. Inputs are never modified."""
    out = Path(out)
    resolved = [Path(p).resolve() for p in inputs]
    seen: dict[Path, str] = {}
    for p, r in zip(inputs, resolved):
        if r in seen:
            raise DataError(f"merge-json: {p} is given twice (as {seen[r]}); each shard file once")
        seen[r] = str(p)
    if out.resolve() in seen:
        raise DataError(f"merge-json: the output {out} is one of the inputs; inputs are never overwritten")
    if out.is_dir():
        raise DataError(f"merge-json: the output {out} is a folder; give a file name such as merged.json")
    merged, notes = merge_coco([read_json(p, "merge-json") for p in inputs], [str(p) for p in inputs])
    atomic_write_text(out, dumps(merged))  # a failed write is one line: "could not write OUT: reason"
    return merged, notes


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
