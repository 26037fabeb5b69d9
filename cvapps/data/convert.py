"""``cvapps data convert``: COCO layout <-> YOLO txt layout, through the checked form of a split.

Both directions read the source with the ``data check`` rules (so the output is clean), keep the
images where they are when writing next to the source (``out`` = ROOT) or copy them to
``OUT/images/<split>/``, and refuse to overwrite existing annotation files unless asked.

* COCO -> YOLO: ``OUT/labels/<split>/<stem>.txt`` (``class cx cy w h`` normalised, class = index in
  sorted category ids) and ``OUT/data.yaml`` (``names``, plus ``category_ids`` so a later YOLO ->
  COCO conversion restores the original ids).
* YOLO -> COCO: ``OUT/annotations/<split>.json`` with image ids 1..N (sorted file names) and category
  ids from ``data.yaml``'s ``category_ids`` if present, else 1..K.
"""

from __future__ import annotations

import json
from pathlib import Path

from cvapps.checkpoint import atomic_write_text
from cvapps.data.check import DetectionSplit, available_splits, load_detection_split
from cvapps.errors import DataError
from cvapps.formats.coco import dumps
from cvapps.formats.yolo import read_data_yaml, write_data_yaml, write_yolo_labels
from cvapps.io.guard import protected
from cvapps.io.safe_write import copy_file


def _check_writable(paths: list[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]} exists (and {len(existing) - 1} more); pass --overwrite to replace")


def _copy_images(split: DetectionSplit, out: Path) -> None:
    src_dir = split.root / "images" / split.split
    if out.resolve() == split.root.resolve():
        return
    for rec in split.records:
        dst = out / "images" / split.split / rec.file_name  # copied again: a fresh file, whatever is there
        copy_file(rec.path if rec.path.is_file() else src_dir / rec.file_name, dst)


def coco_to_yolo(root: str | Path, out: str | Path | None = None, splits: list[str] | None = None,
                 overwrite: bool = False) -> list[DetectionSplit]:
    """Write the YOLO txt layout of every COCO split of ``root`` under ``out`` (default: ``root``)."""
    root = Path(root)
    out = Path(out) if out is not None else root
    # out is an output root (every file written inside it through no link); the annotations read
    # are inputs, never replaced
    with protected(out, files=[], option="--out ", others=list((root / "annotations").glob("*.json"))):
        return _coco_to_yolo(root, out, splits, overwrite)


def _coco_to_yolo(root: Path, out: Path, splits: list[str] | None, overwrite: bool) -> list[DetectionSplit]:
    splits = splits or available_splits(root)
    loaded = [load_detection_split(root, s, layout="coco") for s in splits]
    if not loaded:
        raise DataError(f"{root}: no COCO splits (annotations/<split>.json) to convert")
    names, cat_ids = loaded[0].class_names, loaded[0].category_ids
    for sp in loaded[1:]:
        if sp.category_ids != cat_ids or sp.class_names != names:
            raise DataError(f"{root}: splits {loaded[0].split!r} and {sp.split!r} have different categories")
    label_files = [out / "labels" / sp.split / f"{Path(r.file_name).with_suffix('').as_posix()}.txt"
                   for sp in loaded for r in sp.records]
    _check_writable(label_files + [out / "data.yaml"], overwrite)
    for sp in loaded:
        _copy_images(sp, out)
        for rec in sp.records:
            path = out / "labels" / sp.split / f"{Path(rec.file_name).with_suffix('').as_posix()}.txt"
            write_yolo_labels(path, rec.boxes, rec.labels.tolist(), rec.width, rec.height)
    write_data_yaml(out / "data.yaml", names, {sp.split: f"images/{sp.split}" for sp in loaded},
                    {"category_ids": list(cat_ids)})
    return loaded


def yolo_to_coco(root: str | Path, out: str | Path | None = None, splits: list[str] | None = None,
                 overwrite: bool = False) -> list[DetectionSplit]:
    """Write ``annotations/<split>.json`` for every YOLO split of ``root`` under ``out`` (default ``root``)."""
    root = Path(root)
    out = Path(out) if out is not None else root
    with protected(out, option="--out ", folders=[], others=[root / "data.yaml"]):
        return _yolo_to_coco(root, out, splits, overwrite)


def _yolo_to_coco(root: Path, out: Path, splits: list[str] | None, overwrite: bool) -> list[DetectionSplit]:
    splits = splits or [p.name for p in sorted((root / "labels").iterdir()) if p.is_dir()] \
        if (root / "labels").is_dir() else []
    loaded = [load_detection_split(root, s, layout="yolo") for s in splits]
    if not loaded:
        raise DataError(f"{root}: no YOLO splits (labels/<split>/ + data.yaml) to convert")
    ids = read_data_yaml(root).get("category_ids")
    names = loaded[0].class_names
    if not (isinstance(ids, list) and len(ids) == len(names) and len(set(ids)) == len(ids)
            and all(isinstance(i, int) for i in ids)):
        ids = list(range(1, len(names) + 1))
    _check_writable([out / "annotations" / f"{sp.split}.json" for sp in loaded], overwrite)
    for sp in loaded:
        _copy_images(sp, out)
        gt = json.loads(json.dumps(sp.gt))
        remap = {i + 1: cid for i, cid in enumerate(ids)}
        for a in gt["annotations"]:
            a["category_id"] = remap[a["category_id"]]
            a["bbox"] = [round(v, 3) for v in a["bbox"]]
            a["area"] = round(a["area"], 3)
        gt["categories"] = [{"id": cid, "name": n} for cid, n in zip(ids, names)]
        dataset = {"info": {"description": f"converted from YOLO txt ({sp.split})"}, "licenses": [], **gt}
        atomic_write_text(out / "annotations" / f"{sp.split}.json", dumps(dataset))
    return loaded
