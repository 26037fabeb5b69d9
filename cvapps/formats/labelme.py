"""LabelMe JSON, read and write: one ``<image stem>.json`` next to each image (splits as in
:mod:`cvapps.formats.objects`) holding ``{"version", "flags", "shapes": [{"label", "points",
"group_id", "description", "shape_type", "flags", "mask"}], "imagePath", "imageData",
"imageHeight", "imageWidth"}`` in 0-based continuous pixels.

* ``rectangle`` (two corners, any order) is a box; ``polygon`` a box and its COCO polygon, and the
  polygons sharing one ``group_id`` and label are one object (LabelMe's way to draw an occluded
  object in parts); ``circle`` (centre, a point on it) and ``mask`` (its two corners; the embedded
  PNG is not decoded) give their boxes; points and lines are not regions and are left out.
* ``imagePath`` is resolved relative to the json (``\\`` read as ``/``); one leading outside ROOT is
  rejected (reported), one that does not exist falls back to ``<json stem>.<image ext>`` next to the
  json. ``imageData`` (the image embedded as base64) is never decoded.
* a shape with ``"difficult": true`` or ``"flags": {"difficult": true}`` is difficult (an ignore
  region, see :func:`cvapps.formats.objects.build_split`); the writer sets the flag.
* JSON files that are not LabelMe's (no ``shapes``) are skipped; broken ones are reported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cvapps.errors import DataError
from cvapps.formats.coco import read_json
from cvapps.formats.objects import (
    ImageEntry,
    LabeledObject,
    Plan,
    build_split,
    choose_labels,
    find_image,
    label_files,
    label_text,
    name_in,
    number,
    polygon,
    read_label_list,
    relpath,
    resolve_inside,
    sidecar_files,
    split_objects,
)
from cvapps.formats.report import CheckReport, DetectionSplit, inside

_NOT_REGIONS = ("point", "points", "line", "linestrip")
VERSION = "5.5.0"  # the LabelMe file version written


@dataclass
class _Parsed:
    entry: ImageEntry | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)  # (report kind, message)


def is_labelme(data: Any) -> bool:
    """Whether parsed JSON is a LabelMe file (an object with ``shapes``)."""
    return isinstance(data, dict) and "shapes" in data


def labelme_splits(root: str | Path) -> list[str]:
    """Splits with at least one ``.json`` file (see :mod:`cvapps.formats.objects`)."""
    return sorted(sidecar_files(Path(root), ".json"))


def _size(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _shape(shape: Any, where: str) -> tuple[LabeledObject, Any] | None:
    """One shape as an object and its group key (None: not a region); ValueError/TypeError when malformed."""
    if not isinstance(shape, dict):
        raise TypeError("a shape must be a JSON object")
    kind = shape.get("shape_type") or "polygon"  # files of LabelMe 3 have no shape_type: polygons
    if kind in _NOT_REGIONS:
        return None
    label = label_text(shape.get("label"))
    points = shape.get("points")
    if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise ValueError("points must be a list of [x, y] pairs")
    flat = [number(v) for p in points for v in p]
    xs, ys = flat[0::2], flat[1::2]
    flags = shape.get("flags")
    difficult = shape.get("difficult") is True or (isinstance(flags, dict) and flags.get("difficult") is True)
    obj = LabeledObject(label, difficult=difficult, where=where)
    group = shape.get("group_id")
    if kind in ("rectangle", "mask"):
        if len(xs) < 2:
            raise ValueError(f"a {kind} needs two corner points")
        obj.box = [min(xs), min(ys), max(xs), max(ys)]
    elif kind == "circle":
        if len(xs) != 2:
            raise ValueError("a circle needs its centre and a point on it")
        r = math.hypot(xs[1] - xs[0], ys[1] - ys[0])
        obj.box = [xs[0] - r, ys[0] - r, xs[0] + r, ys[0] + r]
    elif kind == "polygon":
        obj.polygons = [polygon(flat)]
    else:
        raise ValueError(f"unknown shape_type {kind!r:.30}")
    key = (label, group) if kind == "polygon" and isinstance(group, (int, str)) and not isinstance(group, bool) else None
    return obj, key


def _parse(root: Path, path: Path, base: Path) -> _Parsed | None:
    """One json file: its image entry and problems; None when it is not a LabelMe file."""
    where = relpath(path, root)
    if not inside(path, root):
        return _Parsed(problems=[("escaping_paths", f"{where} links outside {root}")])
    try:
        data = read_json(path)
    except DataError as exc:
        return _Parsed(problems=[("malformed_entries", f"{exc}; image dropped")])
    if not is_labelme(data):
        return None
    shapes = data["shapes"]
    if not isinstance(shapes, list):
        return _Parsed(problems=[("malformed_entries", f"{where}: 'shapes' must be a list; image dropped")])
    parsed = _Parsed()
    objects: list[LabeledObject] = []
    groups: dict[Any, LabeledObject] = {}
    for i, shape in enumerate(shapes):
        try:
            got = _shape(shape, f"{where} shapes[{i}]")
        except (TypeError, ValueError) as exc:
            parsed.problems.append(("malformed_entries", f"{where} shapes[{i}]: {exc}"))
            continue
        if got is None:
            continue
        obj, key = got
        if key is not None and key in groups:  # one more part of a grouped object
            groups[key].polygons += obj.polygons
            groups[key].difficult |= obj.difficult
            continue
        if key is not None:
            groups[key] = obj
        objects.append(obj)
    image = None
    name = data.get("imagePath")
    if isinstance(name, str) and name:
        image = resolve_inside(root, path.parent, name)
        if image is None:
            parsed.problems.append(("escaping_paths", f"{where}: imagePath {name!r:.80} points outside {root}"))
            return parsed
    if image is None or not image.is_file():
        image = find_image(path.parent, path.stem)
    if image is None or not inside(image, root):
        parsed.problems.append(("missing_images", f"{where}: image {name or path.stem!r:.80} not found"))
        return parsed
    parsed.entry = ImageEntry(name_in(image, base, root), image, _size(data.get("imageWidth")),
                              _size(data.get("imageHeight")), objects)
    return parsed


def load_labelme_split(root: str | Path, split: str, *, read_images: bool = False,
                       class_names: list[str] | None = None) -> DetectionSplit:
    """Read and check one split of a LabelMe dataset. Classes: ``ROOT/labels.txt``, else
    ``class_names``, else every label in the dataset, sorted."""
    root = Path(root)
    files = sidecar_files(root, ".json")
    if split not in files:
        raise DataError(f"{root}: no LabelMe split {split!r} (found {sorted(files) or 'none'})")
    cache: dict[Path, _Parsed | None] = {}

    def parse(path: Path, base: Path) -> _Parsed | None:
        if path not in cache:
            cache[path] = _parse(root, path, base)
        return cache[path]

    fixed = read_label_list(root)
    found: set[str] = set()
    if fixed is None and not class_names:
        for items in files.values():
            for path, base in items:
                if (p := parse(path, base)) is not None and p.entry is not None:
                    found |= {o.label for o in p.entry.objects}
    labels = choose_labels(fixed, found, class_names, root)
    report = CheckReport(split)
    entries = []
    for path, base in files[split]:
        parsed = parse(path, base)
        if parsed is None:
            continue
        for kind, message in parsed.problems:
            report.add(kind, message)
        if parsed.entry is not None:
            entries.append(parsed.entry)
    return build_split(root, split, "labelme", entries, report, labels, read_images)


# ---------------------------------------------------------------------------------------------
# writing

def _out_shape(label: str, points: list[list[float]], kind: str, group: int | None, difficult: bool) -> dict[str, Any]:
    return {"label": label, "points": [[round(x, 3), round(y, 3)] for x, y in points], "group_id": group,
            "description": "", "shape_type": kind, "flags": {"difficult": True} if difficult else {}, "mask": None}


def labelme_json(image_path: str, width: int, height: int, objects: Sequence[LabeledObject]) -> str:
    """One LabelMe file: boxes as rectangles, polygons as polygons (an object of several polygons
    shares a ``group_id``); ``imageData`` null (LabelMe reads the image from ``imagePath``)."""
    shapes, groups = [], 0
    for obj in objects:
        if obj.polygons:
            group = None
            if len(obj.polygons) > 1:
                groups += 1
                group = groups
            for p in obj.polygons:
                shapes.append(_out_shape(obj.label, [[x, y] for x, y in zip(p[0::2], p[1::2])], "polygon", group,
                                         obj.difficult))
        else:
            x1, y1, x2, y2 = obj.xyxy()
            shapes.append(_out_shape(obj.label, [[x1, y1], [x2, y2]], "rectangle", None, obj.difficult))
    doc = {"version": VERSION, "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": None,
           "imageHeight": int(height), "imageWidth": int(width)}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def labelme_plan(splits: Sequence[DetectionSplit], out: Path, in_place: bool) -> Plan:
    """A json next to each image: with ``in_place`` where the image is, else ``OUT/<split>/<file
    name>`` (images copied there); plus ``labels.txt`` (class order and ids)."""
    plan = Plan(files=label_files(out, splits[0].class_names, splits[0].category_ids))
    written: dict[Path, Path] = {}
    for sp in splits:
        for rec, objects in split_objects(sp):
            image = rec.path if in_place else out / sp.split / rec.file_name
            target = image.with_suffix(".json")
            if target in written:
                if written[target] != rec.path.resolve():
                    raise DataError(f"{rec.path} and {written[target]} would share the LabelMe file {target}: "
                                    "rename one of them")
                continue
            written[target] = rec.path.resolve()
            plan.files.append((target, partial(labelme_json, image.name, rec.width, rec.height, objects)))
            if not in_place:
                plan.images.append((image, rec.path))
    return plan
