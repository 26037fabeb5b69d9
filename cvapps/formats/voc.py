"""Pascal VOC XML, read and write: ``ROOT/Annotations/<id>.xml`` with the images in
``ROOT/JPEGImages/`` and the splits in ``ROOT/ImageSets/Main/<split>.txt`` (one image id per line;
without that folder all annotations are the ``train`` split), or the common variant with an
``.xml`` next to each image (LabelImg's output; splits as in :mod:`cvapps.formats.objects`).

Coordinates: VOC's are 1-based pixel indices with both ends inclusive (``xmin=1, xmax=W`` is the
whole width of a W-wide image), so in cvapps' 0-based continuous pixels a box is
``[xmin - 1, ymin - 1, xmax, ymax]`` (as detectron2 reads VOC) and the writer adds the 1 back.
``<difficult>1</difficult>`` objects are kept as ignore regions (see
:func:`cvapps.formats.objects.build_split`). ``<filename>`` is looked up in the image folder (never
outside ROOT), else ``<id>.<image extension>``; ``<path>`` (an absolute path of the labeller's
machine) is never read. Files are parsed with :mod:`cvapps.formats.xml_safe` (no entities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import NamedTuple
from xml.etree.ElementTree import Element

from cvapps.errors import DataError
from cvapps.formats.objects import (
    ImageEntry,
    LabeledObject,
    Plan,
    build_split,
    choose_labels,
    files_with_suffix,
    find_image,
    label_files,
    label_text,
    name_in,
    number,
    read_label_list,
    relpath,
    resolve_inside,
    sidecar_files,
    split_objects,
)
from cvapps.formats.report import CheckReport, DetectionSplit, inside
from cvapps.formats.xml_safe import add, child_text, fmt, read_xml, xml_document


class _Job(NamedTuple):
    """One annotation file to read: where its image is looked for and named from."""

    xml: Path
    image_dir: Path   # <filename> and <stem>.<ext> are looked up here
    stem: str
    base: Path        # the image's name in the split is relative to this folder
    where: str        # how reports name the file
    listed: str = ""  # the ImageSets line naming it


@dataclass
class _Parsed:
    filename: str | None = None
    width: int = 0
    height: int = 0
    objects: list[LabeledObject] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (report kind, message)
    usable: bool = True  # False: not a VOC file (skipped) or not readable (reported)


def standard(root: Path) -> bool:
    """Whether ROOT is the standard VOC layout (an ``Annotations`` folder)."""
    return (root / "Annotations").is_dir()


def voc_splits(root: str | Path) -> list[str]:
    """The splits: ``ImageSets/Main/<split>.txt`` (not the per-class ``<class>_<split>.txt`` lists),
    ``train`` for ``Annotations/`` without them, or the folders of the xml-next-to-image variant."""
    root = Path(root)
    if standard(root):
        main = root / "ImageSets" / "Main"
        lists = {p.stem for p in main.glob("*.txt") if p.is_file()} if main.is_dir() else set()
        lists = {s for s in lists if not ("_" in s and s.rsplit("_", 1)[1] in lists)}
        if lists:
            return sorted(lists)
        return ["train"] if files_with_suffix(root / "Annotations", ".xml") else []
    return sorted(sidecar_files(root, ".xml"))


def _jobs(root: Path) -> dict[str, list[_Job]]:
    """The annotation files of every split (a listed id without its file is a job whose xml is missing)."""
    if not standard(root):
        return {s: [_Job(x, x.parent, x.stem, base, relpath(x, root)) for x, base in files]
                for s, files in sidecar_files(root, ".xml").items()}
    ann, images = root / "Annotations", root / "JPEGImages"
    main = root / "ImageSets" / "Main"
    out: dict[str, list[_Job]] = {}
    for split in voc_splits(root):
        listed = main / f"{split}.txt"
        if listed.is_file():
            lines = listed.read_text(encoding="utf-8", errors="replace").splitlines()
            ids = [(line.split()[0], f"{relpath(listed, root)}:{n}") for n, line in enumerate(lines, 1) if line.split()]
        else:
            ids = [(relpath(x, ann)[:-4], "") for x in files_with_suffix(ann, ".xml")]
        out[split] = [_Job(ann / f"{i}.xml", images, i, images, f"Annotations/{i}.xml", at) for i, at in ids]
    return out


def _parse(root: Path, job: _Job) -> _Parsed:
    """One VOC file; a file that cannot be used at all gives a single problem."""
    if not inside(job.xml, root):
        return _Parsed(problems=[("escaping_paths", f"{job.listed or job.where}: {job.xml} leads outside {root}")],
                       usable=False)
    if not job.xml.is_file():
        return _Parsed(problems=[("malformed_entries", f"{job.listed}: {job.where} not found; image dropped")],
                       usable=False)
    try:
        doc = read_xml(job.xml, job.where)
    except DataError as exc:
        return _Parsed(problems=[("malformed_entries", f"{exc}; image dropped")], usable=False)
    if doc.tag != "annotation":
        return _Parsed(usable=False)
    parsed = _Parsed(filename=child_text(doc, "filename"))
    try:
        parsed.width, parsed.height = (int(number(child_text(doc, "size", k))) for k in ("width", "height"))
    except ValueError:
        pass  # no usable size: read from the image header
    for i, obj in enumerate(doc.findall("object"), 1):
        where = f"{job.where} object {i}"
        try:
            parsed.objects.append(_object(obj, where))
        except (ValueError, DataError) as exc:
            parsed.problems.append(("malformed_entries", f"{where}: {exc}"))
    return parsed


def _object(obj: Element, where: str) -> LabeledObject:
    name = label_text(child_text(obj, "name") or "")
    box = obj.find("bndbox")
    if box is None:
        raise ValueError("no <bndbox>")
    x1, y1, x2, y2 = (number(child_text(box, k)) for k in ("xmin", "ymin", "xmax", "ymax"))
    difficult = child_text(obj, "difficult")
    if difficult not in (None, "", "0", "1"):
        raise ValueError(f"<difficult> must be 0 or 1, got {difficult!r:.30}")
    return LabeledObject(name, [x1 - 1, y1 - 1, x2, y2], difficult=difficult == "1", where=where)


def _entry(root: Path, job: _Job, parsed: _Parsed, report: CheckReport) -> ImageEntry | None:
    for kind, message in parsed.problems:
        report.add(kind, message)
    if not parsed.usable:
        return None
    path = None
    if parsed.filename:
        path = resolve_inside(root, job.image_dir, parsed.filename)
        if path is None:
            report.add("escaping_paths", f"{job.where}: <filename> {parsed.filename!r:.80} points outside {root}")
            return None
    if path is None or not path.is_file():
        path = find_image(job.image_dir, job.stem)
    if path is None:
        report.add("missing_images", f"{job.where}: image {parsed.filename or job.stem!r} not found in "
                                     f"{relpath(job.image_dir, root) or '.'}")
        return None
    if not inside(path, root):
        report.add("escaping_paths", f"{job.where}: image {path} links outside {root}")
        return None
    return ImageEntry(name_in(path, job.base, root), path, parsed.width, parsed.height, parsed.objects)


def load_voc_split(root: str | Path, split: str, *, read_images: bool = False,
                   class_names: list[str] | None = None) -> DetectionSplit:
    """Read and check one split of a VOC dataset (either variant). Classes: ``ROOT/labels.txt``, else
    ``class_names``, else every name in the dataset's files, sorted."""
    root = Path(root)
    jobs = _jobs(root)
    if split not in jobs:
        raise DataError(f"{root}: no VOC split {split!r} (found {sorted(jobs) or 'none'})")
    cache: dict[Path, _Parsed] = {}

    def parse(job: _Job) -> _Parsed:
        if job.xml not in cache:
            cache[job.xml] = _parse(root, job)
        return cache[job.xml]

    fixed = read_label_list(root)
    found = ({o.label for js in jobs.values() for j in js for o in parse(j).objects}
             if fixed is None and not class_names else set())
    labels = choose_labels(fixed, found, class_names, root)
    report = CheckReport(split)
    entries = [e for j in jobs[split] if (e := _entry(root, j, parse(j), report)) is not None]
    return build_split(root, split, "voc", entries, report, labels, read_images)


# ---------------------------------------------------------------------------------------------
# writing

def voc_xml(filename: str, width: int, height: int, objects: Sequence[LabeledObject], folder: str = "JPEGImages") -> str:
    """One VOC annotation file (boxes only; 1-based pixel coordinates, see the module doc)."""
    doc = Element("annotation")
    add(doc, "folder", folder)
    add(doc, "filename", filename)
    size = add(doc, "size")
    add(size, "width", width)
    add(size, "height", height)
    add(size, "depth", 3)
    add(doc, "segmented", 0)
    for obj in objects:
        x1, y1, x2, y2 = obj.xyxy()
        node = add(doc, "object")
        add(node, "name", obj.label)
        add(node, "pose", "Unspecified")
        add(node, "truncated", 0)
        add(node, "difficult", int(obj.difficult))
        box = add(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1, y1 + 1, x2, y2)):
            add(box, key, fmt(value))
    return xml_document(doc)


def _stems_collide(splits: Sequence[DetectionSplit]) -> bool:
    """Whether two different images of the splits have one VOC id (their name without extension)."""
    seen: dict[str, Path] = {}
    for sp in splits:
        for rec in sp.records:
            stem, path = PurePosixPath(rec.file_name).with_suffix("").as_posix(), rec.path.resolve()
            if seen.setdefault(stem, path) != path:
                return True
    return False


def voc_plan(splits: Sequence[DetectionSplit], out: Path, in_place: bool) -> Plan:
    """The standard layout under ``out`` (images copied to ``JPEGImages/``), or with ``in_place`` an
    ``.xml`` next to each image where it is; plus ``labels.txt`` (class order and ids). VOC ids are
    one namespace: when two splits hold different images of one name (``train/1.jpg``,
    ``val/1.jpg``), every id gets its split as a folder (``train/1``)."""
    plan = Plan(files=label_files(out, splits[0].class_names, splits[0].category_ids))
    written: dict[Path, Path] = {}
    polygons = 0
    prefixed = not in_place and _stems_collide(splits)
    for sp in splits:
        ids: list[str] = []
        for rec, objects in split_objects(sp):
            polygons += sum(1 for o in objects if o.polygons)
            file_name = f"{sp.split}/{rec.file_name}" if prefixed else rec.file_name
            stem = PurePosixPath(file_name).with_suffix("").as_posix()
            xml = rec.path.with_suffix(".xml") if in_place else out / "Annotations" / f"{stem}.xml"
            ids.append(stem)
            if xml in written:
                if written[xml] != rec.path.resolve():
                    raise DataError(f"{rec.path} and {written[xml]} would share the VOC annotation {xml}: "
                                    "rename one of them")
                continue
            written[xml] = rec.path.resolve()
            name, folder = (rec.path.name, rec.path.parent.name) if in_place else (file_name, "JPEGImages")
            plan.files.append((xml, partial(voc_xml, name, rec.width, rec.height, objects, folder)))
            if not in_place:
                plan.images.append((out / "JPEGImages" / file_name, rec.path))
        if not in_place:
            plan.files.append((out / "ImageSets" / "Main" / f"{sp.split}.txt",
                               partial("".join, [f"{i}\n" for i in ids])))
    if polygons:
        plan.notes.append(f"{polygons} polygon objects written as boxes (VOC XML holds boxes only)")
    return plan
