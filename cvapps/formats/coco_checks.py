"""Reading a COCO dataset file with the check rules (the rules table is in :mod:`cvapps.data.check`).

:func:`load_coco_split` returns a :class:`~cvapps.formats.report.DetectionSplit`; with
``segments=True`` (segmentation) each record also keeps the checked polygons/RLE of its objects; an
annotation without a bbox takes its segmentation's bounding box. Detection and segmentation read through this
one function, so an escaping ``file_name``, a missing ``height``, a bad polygon or RLE and an
``iscrowd`` that is not 0/1 are handled the same way for every task: reported and dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from cvapps.errors import DataError, ImageReadError
from cvapps.formats.coco import read_coco_json, segmentation_bbox
from cvapps.formats.report import (
    CheckReport,
    DetectionSplit,
    clean_box,
    inside,
    is_id,
    is_number,
    make_record,
    read_check,
)
from cvapps.io.images import image_size


def check_segmentation(segm: Any, height: int, width: int) -> str | None:
    """Why ``segm`` is not a usable COCO segmentation of a ``height`` x ``width`` image, or None."""
    if isinstance(segm, list):
        if not segm or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                               and all(is_number(v) for v in p) for p in segm):
            return "polygons must be lists of at least 3 finite x, y pairs"
        return None
    if not isinstance(segm, dict) or not isinstance(segm.get("size"), list) or "counts" not in segm:
        return "segmentation must be polygons or an RLE {size, counts}"
    if segm["size"] != [height, width]:
        return f"RLE size {segm['size']!r:.40} differs from the image's {[height, width]}"
    counts = segm["counts"]
    if isinstance(counts, list):
        if not all(is_id(c) and c >= 0 for c in counts) or sum(counts) != height * width:
            return "uncompressed RLE counts must be non-negative integers summing to height * width"
        return None
    if not isinstance(counts, str):
        return "RLE counts must be a string or a list of integers"
    try:  # pycocotools reads any string; a wrong one gives an area larger than the image
        area = int(mask_utils.area({"size": [height, width], "counts": counts.encode("ascii")}))
    except (UnicodeEncodeError, ValueError, TypeError):
        return "RLE counts is not a compressed RLE string"
    return None if 0 <= area <= height * width else "RLE counts do not fit the image"


def read_categories(data: dict[str, Any], report: CheckReport, path: Path) -> dict[int, str]:
    """``{category id: name}`` of a COCO dataset dict; malformed and duplicate entries reported;
    none usable is a DataError."""
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not is_id(c.get("id")) or not isinstance(c.get("name"), str):
            report.add("malformed_entries", f"categories[{i}]: needs an integer id and a name")
            continue
        if c["id"] in cats:
            report.add("duplicate_category_ids", f"categories[{i}]: id {c['id']} already used by {cats[c['id']]!r}")
            continue
        cats[c["id"]] = c["name"]
    if not cats:
        raise DataError(f"{path}: no usable categories")
    return cats


def _crowd(value: Any) -> int | None:
    """iscrowd as 0/1 (missing = 0); None when it is anything else (e.g. ``"yes"``)."""
    if value is None or value is False or value == 0 and is_id(value):
        return 0
    if value is True or value == 1 and is_id(value):
        return 1
    return None


def load_coco_split(root: str | Path, split: str, *, read_images: bool = False,
                    class_names: list[str] | None = None, segments: bool = False) -> DetectionSplit:
    """Read and check ``ROOT/annotations/<split>.json`` with images in ``ROOT/images/<split>/``.

    read_images: decode every image (``data check``); otherwise only existence is checked and
    unreadable files are skipped later by the dataset.
    class_names: if given, must equal the dataset's category names (in sorted-id order).
    segments: keep each object's checked segmentation (``ImageRecord.segments``). An annotation
    needs a bbox or a segmentation (its box is then the segmentation's bounding box).
    """
    root = Path(root)
    ann_path = root / "annotations" / f"{split}.json"
    data = read_coco_json(ann_path)
    image_dir = root / "images" / split
    report = CheckReport(split)

    cats = read_categories(data, report, ann_path)
    category_ids = sorted(cats)
    names = [cats[i] for i in category_ids]
    if class_names and list(class_names) != names:
        raise DataError(f"{ann_path}: categories {names} differ from data.names {list(class_names)}")
    index_of = {cid: i for i, cid in enumerate(category_ids)}

    images: dict[int, dict[str, Any]] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not is_id(im.get("id")) or not isinstance(im.get("file_name"), str) \
                or not im["file_name"]:
            report.add("malformed_entries", f"images[{i}]: needs an integer id and a file_name")
            continue
        if im["id"] in images:
            report.add("duplicate_image_ids", f"images[{i}]: id {im['id']} already used by "
                                              f"{images[im['id']]['file_name']!r}; {im['file_name']!r} dropped")
            continue
        fname = im["file_name"]
        path = image_dir / fname
        if Path(fname).is_absolute() or not inside(path, root):
            report.add("escaping_paths", f"images[{i}]: file_name {fname!r} points outside {root}")
            images[im["id"]] = {"drop": True, "file_name": fname}
            continue
        if not path.is_file():
            report.add("missing_images", f"image id {im['id']}: {path} does not exist")
            images[im["id"]] = {"drop": True, "file_name": fname}
            continue
        w, h = im.get("width"), im.get("height")
        if not (is_id(w) and is_id(h) and w > 0 and h > 0):
            try:
                w, h = image_size(path)
            except ImageReadError as exc:
                report.add("unreadable_images", f"{path}: {exc.reason}")
                images[im["id"]] = {"drop": True, "file_name": fname}
                continue
        if read_images and not read_check(path, w, h, report):
            images[im["id"]] = {"drop": True, "file_name": fname}
            continue
        images[im["id"]] = {"id": im["id"], "file_name": fname, "path": path, "width": w, "height": h,
                            "boxes": [], "labels": [], "segments": []}

    seen_ann_ids: set[int] = set()
    anns_out: list[dict[str, Any]] = []
    next_id = max([a["id"] for a in data["annotations"] if isinstance(a, dict) and is_id(a.get("id"))] + [0]) + 1
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or not is_id(a.get("image_id")) or not is_id(a.get("category_id")):
            report.add("malformed_entries", f"annotations[{i}]: needs image_id, category_id and bbox [x, y, w, h]")
            continue
        bbox = a.get("bbox")
        has_box = isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)
        if not has_box and "segmentation" not in a:
            report.add("malformed_entries", f"annotations[{i}]: needs image_id, category_id and bbox [x, y, w, h]")
            continue
        crowd = _crowd(a.get("iscrowd"))
        if crowd is None:
            report.add("malformed_entries", f"annotations[{i}]: iscrowd must be 0 or 1, got {a['iscrowd']!r:.40}")
            continue
        ann_id = a.get("id")
        duplicate = is_id(ann_id) and ann_id in seen_ann_ids
        if duplicate:
            report.add("duplicate_annotation_ids", f"annotations[{i}]: id {ann_id} already used; given a new id")
        if is_id(ann_id):
            seen_ann_ids.add(ann_id)
        img = images.get(a["image_id"])
        if img is None:
            report.add("unknown_image_ids", f"annotations[{i}]: image_id {a['image_id']} is not in images")
            continue
        if img.get("drop"):
            continue  # the image itself was reported
        if a["category_id"] not in cats:
            report.add("unknown_categories", f"annotations[{i}]: category_id {a['category_id']} is not in categories")
            continue
        segm = a.get("segmentation") if segments or not has_box else None
        if segm is not None:  # checked only where it is used: segmentation, or a box to derive
            why = check_segmentation(segm, img["height"], img["width"])
            if why is not None:
                report.add("malformed_entries", f"annotations[{i}] ({img['file_name']}): {why}")
                continue
            if segments:
                img["segments"].append((a["category_id"], segm, crowd))
        x, y, bw, bh = (float(v) for v in bbox) if has_box else segmentation_bbox(segm, img["height"], img["width"])
        box = clean_box([x, y, x + bw, y + bh], img["width"], img["height"], report,
                        f"annotations[{i}] ({img['file_name']})")
        if box is None:
            continue
        if duplicate or not is_id(ann_id):
            ann_id, next_id = next_id, next_id + 1
        area = a.get("area")
        area = float(area) if is_number(area) and area > 0 else (box[2] - box[0]) * (box[3] - box[1])
        anns_out.append({"id": ann_id, "image_id": img["id"], "category_id": a["category_id"],
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "area": area, "iscrowd": crowd})
        if not crowd:  # crowd regions are ignored by COCOeval and not trained on (as torchvision's references)
            img["boxes"].append(box)
            img["labels"].append(index_of[a["category_id"]])

    kept = [im for im in images.values() if not im.get("drop")]
    records = [make_record(im) for im in kept]
    report.counts["images"] = len(records)
    report.counts["boxes"] = sum(len(r.boxes) for r in records)
    gt = {"images": [{"id": im["id"], "file_name": im["file_name"], "width": im["width"], "height": im["height"]}
                     for im in kept],
          "annotations": anns_out,
          "categories": [{"id": cid, "name": cats[cid]} for cid in category_ids]}
    return DetectionSplit(root, split, "coco", records, names, category_ids, report, gt)


