"""CVAT for images 1.1 XML, read and write: one ``ROOT/annotations.xml``::

    <annotations><version>1.1</version>
      <meta><task>...<labels><label><name>car</name>...</label></labels></task></meta>
      <image id="0" name="a.jpg" subset="train" width="640" height="480">
        <box label="car" occluded="0" xtl="10" ytl="20" xbr="110" ybr="220" z_order="0"/>
        <polygon label="car" points="1,2;30,4;5,60" z_order="0"/>
      </image>
    </annotations>

* images: ``ROOT/images/<subset>/<name>`` (a project export), ``ROOT/images/<name>`` (a task
  export), else ``<name>`` relative to ROOT; never outside ROOT;
* splits: the images' ``subset`` (missing or ``default``: ``train``);
* classes: the ``<label>`` list of the ``<meta>`` (task, project or job; skeleton points left out) in
  its order, else the labels of the shapes, sorted; ids from ``category_ids.txt`` beside the file;
* shapes, in 0-based continuous pixels: ``box`` (a rotated box: the box around it), ``polygon``
  (polygons sharing a ``group_id`` and label are one object, as CVAT's own COCO export merges them),
  ``ellipse`` and ``mask`` (their boxes); polylines, points, tags, cuboids and skeletons are not
  regions and are left out; an ``<attribute name="difficult">true</attribute>`` makes an object
  difficult (an ignore region, see :func:`cvapps.formats.objects.build_split`).

The file is parsed with :mod:`cvapps.formats.xml_safe` (no entities); one that cannot be read at all
is a one-line DataError, a bad image entry or shape a reported skip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

from cvapps.errors import DataError
from cvapps.formats.objects import (
    ImageEntry,
    LabeledObject,
    LabelSet,
    Plan,
    build_split,
    category_id_file,
    choose_labels,
    label_text,
    name_in,
    number,
    polygon,
    read_category_ids,
    resolve_inside,
    split_objects,
)
from cvapps.formats.report import CheckReport, DetectionSplit
from cvapps.formats.xml_safe import add, child_text, fmt, read_xml, xml_document

ANNOTATIONS = "annotations.xml"
_NOT_REGIONS = {"polyline", "points", "tag", "cuboid", "skeleton"}
_TRUE = ("true", "1", "yes")


@dataclass
class _Image:
    split: str
    entry: ImageEntry | None
    problems: list[tuple[str, str]] = field(default_factory=list)


def cvat_splits(root: str | Path) -> list[str]:
    """The subsets of ``ROOT/annotations.xml`` (``train`` for images without one)."""
    return sorted({im.split for im in _read(Path(root))[1]})


def _meta_labels(doc: Element) -> list[str]:
    names: list[str] = []
    meta = doc.find("meta")
    for label in meta.iter("label") if meta is not None else ():
        name = child_text(label, "name")
        if name and label.find("parent") is None and name not in names:  # a <parent>: a skeleton's point
            names.append(name)
    return names


def _split_of(image: Element) -> str:
    subset = (image.get("subset") or "").strip()
    return "train" if subset in ("", "default") else subset


def _read(root: Path) -> tuple[list[str], list[_Image]]:
    """The meta's class names and every image of ``ROOT/annotations.xml`` (DataError if unreadable)."""
    path = root / ANNOTATIONS
    doc = read_xml(path, str(path))
    if doc.tag != "annotations":
        raise DataError(f"{path}: not a CVAT for images file (root element <{doc.tag:.30}>, expected <annotations>)")
    return _meta_labels(doc), [_image(root, im, i) for i, im in enumerate(doc.findall("image"))]


def _image(root: Path, image: Element, index: int) -> _Image:
    split, name = _split_of(image), image.get("name") or ""
    where = f"{ANNOTATIONS} image {name or index!r:.80}"
    out = _Image(split, None)
    if not name:
        out.problems.append(("malformed_entries", f"{where}: an <image> needs a name"))
        return out
    bases = (root / "images" / split, root / "images", root)
    candidates = [resolve_inside(root, base, name) for base in bases]
    found = next((i for i, p in enumerate(candidates) if p is not None and p.is_file()), None)
    path = candidates[found] if found is not None else None
    if path is None:
        kind, why = (("escaping_paths", f"name points outside {root}") if None in candidates
                     else ("missing_images", f"image not found under {root / 'images'} or {root}"))
        out.problems.append((kind, f"{where}: {why}"))
        return out
    try:
        w, h = int(number(image.get("width"))), int(number(image.get("height")))
    except ValueError:
        w = h = 0  # read from the image header
    objects: list[LabeledObject] = []
    groups: dict[Any, LabeledObject] = {}
    for i, shape in enumerate(image):
        at = f"{where} <{shape.tag}> {i}"
        try:
            obj = _shape(shape, at)
        except ValueError as exc:
            out.problems.append(("malformed_entries", f"{at}: {exc}"))
            continue
        if obj is None:
            continue
        key = (obj.label, shape.get("group_id")) if obj.polygons and shape.get("group_id") not in (None, "", "0") else None
        if key is not None and key in groups:  # one more part of a grouped object
            groups[key].polygons += obj.polygons
            groups[key].difficult |= obj.difficult
            continue
        if key is not None:
            groups[key] = obj
        objects.append(obj)
    out.entry = ImageEntry(name_in(path, bases[found], root), path, max(w, 0), max(h, 0), objects)
    return out


def _shape(shape: Element, where: str) -> LabeledObject | None:
    """One shape element as an object (None: not a region); ValueError when malformed."""
    if shape.tag in _NOT_REGIONS:
        return None
    label = label_text(shape.get("label"))
    attr = shape.find("attribute[@name='difficult']")
    obj = LabeledObject(label, difficult=attr is not None and (attr.text or "").strip().lower() in _TRUE, where=where)
    get = shape.get
    if shape.tag == "box":
        x1, y1, x2, y2 = (number(get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
        angle = math.radians(number(get("rotation") or 0))
        if angle:  # CVAT rotates a box about its centre
            cx, cy, c, s = (x1 + x2) / 2, (y1 + y2) / 2, math.cos(angle), math.sin(angle)
            corners = [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c)
                       for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))]
            x1, y1 = min(p[0] for p in corners), min(p[1] for p in corners)
            x2, y2 = max(p[0] for p in corners), max(p[1] for p in corners)
        obj.box = [x1, y1, x2, y2]
    elif shape.tag == "polygon":
        pairs = [p.split(",") for p in (get("points") or "").split(";") if p.strip()]
        if not all(len(p) == 2 for p in pairs):
            raise ValueError("points must be 'x1,y1;x2,y2;...'")
        obj.polygons = [polygon([v for p in pairs for v in p])]
    elif shape.tag == "ellipse":
        cx, cy, rx, ry = (number(get(k)) for k in ("cx", "cy", "rx", "ry"))
        obj.box = [cx - rx, cy - ry, cx + rx, cy + ry]
    elif shape.tag == "mask":
        left, top, w, h = (number(get(k)) for k in ("left", "top", "width", "height"))
        obj.box = [left, top, left + w, top + h]
    else:
        return None  # not a shape (e.g. a <tag> of another version)
    return obj


def load_cvat_split(root: str | Path, split: str, *, read_images: bool = False,
                    class_names: list[str] | None = None) -> DetectionSplit:
    """Read and check one subset of ``ROOT/annotations.xml``."""
    root = Path(root)
    meta, images = _read(root)
    if not any(im.split == split for im in images):
        raise DataError(f"{root / ANNOTATIONS}: no images of subset {split!r} "
                        f"(found {sorted({im.split for im in images}) or 'none'})")
    fixed = LabelSet(meta, read_category_ids(root, len(meta)), fixed=True) if meta else None
    found = {o.label for im in images if im.entry is not None for o in im.entry.objects}
    labels = choose_labels(fixed, found, class_names, root / ANNOTATIONS)
    report = CheckReport(split)
    for im in images:
        if im.split == split:
            for kind, message in im.problems:
                report.add(kind, message)
    entries = [im.entry for im in images if im.split == split and im.entry is not None]
    return build_split(root, split, "cvat", entries, report, labels, read_images)


# ---------------------------------------------------------------------------------------------
# writing

def _attributes(parent: Element, difficult: bool) -> None:
    add(parent, "attribute", "true" if difficult else "false", name="difficult")


def cvat_xml(images: Sequence[tuple[str, str, int, int, Sequence[LabeledObject]]], names: Sequence[str]) -> str:
    """``annotations.xml`` of ``images`` (name, subset, width, height, objects): boxes as ``<box>``,
    polygons as ``<polygon>`` (an object of several polygons shares a ``group_id``). The
    ``difficult`` attribute is declared and written only when some object is difficult."""
    with_difficult = any(o.difficult for *_, objs in images for o in objs)
    doc = Element("annotations")
    add(doc, "version", "1.1")
    task = add(add(doc, "meta"), "task")
    add(task, "name", "cvapps export")
    add(task, "size", len(images))
    add(task, "mode", "annotation")
    labels = add(task, "labels")
    for name in names:
        label = add(labels, "label")
        add(label, "name", name)
        add(label, "type", "any")
        attrs = add(label, "attributes")
        if with_difficult:
            spec = add(attrs, "attribute")
            for key, value in (("name", "difficult"), ("mutable", "False"), ("input_type", "checkbox"),
                               ("default_value", "false"), ("values", "false\ntrue")):
                add(spec, key, value)
    groups = 0
    for i, (name, subset, width, height, objects) in enumerate(images):
        node = add(doc, "image", id=str(i), name=name, subset=subset, width=str(width), height=str(height))
        for obj in objects:
            common = {"label": obj.label, "source": "manual", "occluded": "0", "z_order": "0"}
            if obj.polygons:
                if len(obj.polygons) > 1:
                    groups += 1
                    common["group_id"] = str(groups)
                for p in obj.polygons:
                    points = ";".join(f"{fmt(x)},{fmt(y)}" for x, y in zip(p[0::2], p[1::2]))
                    shape = add(node, "polygon", points=points, **common)
                    if with_difficult:
                        _attributes(shape, obj.difficult)
            else:
                x1, y1, x2, y2 = obj.xyxy()
                shape = add(node, "box", xtl=fmt(x1), ytl=fmt(y1), xbr=fmt(x2), ybr=fmt(y2), **common)
                if with_difficult:
                    _attributes(shape, obj.difficult)
    return xml_document(doc)


def _name_in_place(path: Path, root: Path, split: str) -> str:
    """The ``name`` under which the reader finds ``path`` where it is (see the module doc)."""
    for base in (root / "images" / split, root / "images", root):
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            continue
    raise DataError(f"{path} is not under {root}")


def cvat_plan(splits: Sequence[DetectionSplit], out: Path, in_place: bool) -> Plan:
    """``OUT/annotations.xml`` (each split a subset) and ``category_ids.txt`` when the ids are not
    1..K; images copied to ``OUT/images/<split>/`` unless ``in_place``."""
    plan = Plan(files=category_id_file(out, splits[0].category_ids))
    images = []
    for sp in splits:
        for rec, objects in split_objects(sp):
            name = _name_in_place(rec.path, out, sp.split) if in_place else rec.file_name
            if not in_place:
                plan.images.append((out / "images" / sp.split / rec.file_name, rec.path))
            images.append((name, sp.split, rec.width, rec.height, objects))
    plan.files.insert(0, (out / ANNOTATIONS, partial(cvat_xml, images, list(splits[0].class_names))))
    return plan
