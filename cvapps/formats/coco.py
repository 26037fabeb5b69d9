"""COCO JSON: reading files, results lists, RLE masks, the empty-result rule and the image-id rule.

Formats (https://cocodataset.org/#format-data and #format-results):

* results list (``predictions.json``): ``[{"image_id", "category_id", "bbox": [x, y, w, h]
  absolute pixels, "score"}]``, plus ``"segmentation"`` (compressed RLE) for masks; what
  ``COCO.loadRes`` and COCOeval read;
* dataset file (``predictions_coco.json``, datasets): ``{"images", "annotations", "categories"}``,
  predicted annotations also carry ``score``.

One rule for each of these, used by every writer:

* boxes: xyxy -> ``[x, y, w, h]`` rounded to 0.01 px, negative sizes clamped to 0, score to 1e-5
  (:func:`box_to_coco`); masks: ``mask_to_rle`` / ``rle_to_mask`` (pycocotools compressed RLE,
  ``counts`` as ``str``): both in :mod:`cvapps.formats.coco_encode`;
* a prediction's results entries: each part's ``to_coco`` (:mod:`cvapps.structures.prediction`);
* empty results: pycocotools' ``loadRes`` rejects ``[]`` (it reads ``anns[0]``), so a run that
  found nothing writes one placeholder (:func:`empty_results`): a score-0 entry with a zero-size box
  and an empty mask, which loads as a bbox or a segm result and cannot change any AP;
* image ids (:class:`ImageIndex`): with a ground-truth file (``--coco-gt``) its ids, matched by
  ``file_name``; otherwise 1..N in the order images/frames are written.
* file names that are not valid UTF-8: kept reversibly as ``\\udcXX`` JSON escapes of their
  undecodable bytes (:data:`FILE_NAME_RULE`), never the lossy ``\\xff`` text of other outputs.
* video frames and tracks (:class:`VideoIndex`): the layout of TAO and mmtracking's ``CocoVID``
  video datasets: a top-level
  ``videos`` list ``{"id", "name", "width", "height"}``, each frame's image entry carries
  ``video_id`` and ``frame_id`` (the frame's index in its video, from 0), and each tracked
  annotation ``track_id`` (unique over the file). Readers that do not know these keys (pycocotools,
  COCOeval, FiftyOne's COCO importer, which keeps ``track_id`` as a detection attribute) ignore them.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cvapps.errors import DataError
from cvapps.formats.coco_encode import compressed_rle, mask_to_rle
from cvapps.formats.names import (
    FrameRef,
    frame_file_name,
    output_relpath,
    safe_name,
    video_of,
)

# ---------------------------------------------------------------------------------------------
# reading

def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: str | Path, what: str = "") -> Any:
    """The one JSON reader: a missing file, non-UTF-8 text, invalid JSON, NaN/Infinity values and
    nesting too deep to parse are each a one-line DataError naming the file (``what`` prefixes it)."""
    path = Path(path)
    where = f"{what}: {path}" if what else str(path)
    if not path.is_file():
        raise DataError(f"{where}: file not found")
    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise DataError(f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except ValueError as exc:  # from _refuse_constant
        raise DataError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{where}: not valid JSON (nested too deeply to read)") from None


def read_coco_json(path: str | Path) -> dict[str, Any]:
    """A COCO dataset file; anything that is not one is a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file must be a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: missing the {key!r} list of a COCO dataset file")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


#: How a file name that is not valid UTF-8 is written in COCO files, reversibly: Python reads such a
#: name as a str holding each undecodable byte 0xXY as the lone surrogate U+DCXY
#: (``errors="surrogateescape"``), and the JSON text (ASCII, ``ensure_ascii``) holds it as the
#: escape ``\udcXY``. ``os.fsencode(json.load(f)["images"][0]["file_name"])`` gives the file's bytes
#: back (pycocotools reads the same str). Strict parsers that refuse lone-surrogate escapes
#: (RFC 8259 leaves them undefined) see the escape text; valid UTF-8 names are written as they are.
FILE_NAME_RULE = "undecodable file-name bytes 0xXY are written as the JSON escape \\udcXY (surrogateescape)"


def dumps(obj: Any) -> str:
    """JSON text of an output file (NaN/Infinity refused: they are not JSON); ASCII, so a file name's
    undecodable bytes are ``\\udcXX`` escapes (:data:`FILE_NAME_RULE`)."""
    return json.dumps(obj, allow_nan=False, ensure_ascii=True)


# ---------------------------------------------------------------------------------------------
# boxes and masks

def segmentation_bbox(segm: Any, height: int, width: int) -> list[float]:
    """``[x, y, w, h]`` bounding box of a COCO segmentation (zero size when it is empty)."""
    return [float(v) for v in mask_utils.toBbox(compressed_rle(segm, height, width))]


def empty_results(image_id: int, category_id: int, height: int, width: int) -> list[dict[str, Any]]:
    """The results list written when nothing at all was found: one score-0 entry with a zero-size
    box and an empty mask (see the module doc). ``load_results`` and ``loadRes`` read it."""
    return [{"image_id": int(image_id), "category_id": int(category_id), "bbox": [0.0, 0.0, 0.0, 0.0],
             "segmentation": mask_to_rle(np.zeros((max(1, height), max(1, width)), np.uint8)), "score": 0.0}]


def load_results(coco_gt: Any, results: str | Path | list[dict[str, Any]]) -> Any:
    """``coco_gt.loadRes(results)`` that also accepts an empty list (pycocotools raises on ``[]``):
    then a COCO object with the ground truth's images and categories and no annotations."""
    anns = read_json(results) if isinstance(results, (str, Path)) else results
    if anns:
        return coco_gt.loadRes(copy.deepcopy(anns))
    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                   "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])), "annotations": []}
    res.createIndex()
    return res


# ---------------------------------------------------------------------------------------------
# file names and image ids

def _posix(name: str) -> str:
    return name.replace("\\", "/")


class FileNameMatcher:
    """Matches predicted files to a ground-truth file's ``images`` by ``file_name``.

    A frame matches an image when its path ends with the image's ``file_name`` (path components,
    so ``a/b.jpg`` matches ``.../a/b.jpg`` but not ``.../xa/b.jpg``); the longest match wins.
    Ids are never derived from file stems.
    """

    def __init__(self, images: list[dict[str, Any]]) -> None:
        self.by_name: dict[str, list[dict[str, Any]]] = {}
        for im in images:
            if isinstance(im, dict) and isinstance(im.get("file_name"), str) and "id" in im:
                self.by_name.setdefault(PurePosixPath(_posix(im["file_name"])).name, []).append(im)

    def match(self, source: str) -> dict[str, Any] | None:
        parts = PurePosixPath(_posix(str(source))).parts
        if not parts:
            return None
        best, best_len = None, 0
        for im in self.by_name.get(parts[-1], []):
            want = PurePosixPath(_posix(im["file_name"])).parts
            if len(want) <= len(parts) and tuple(parts[-len(want):]) == want and len(want) > best_len:
                best, best_len = im, len(want)
        return best


class ImageIndex:
    """The one image-id rule: maps a frame to its ``images`` entry ``{"id", "file_name", "width",
    "height"}`` once, so every COCO-writing sink of a run (and of runs over the same source) agrees.

    Without ``gt``: ids 1..N in the order frames are first seen (the order they are written);
    ``file_name`` is the path relative to ``root`` for images under it (else the file name), and for
    video/stream frames the annotated image written for it (``image_dir``/``<stem>_<frame>.jpg``,
    relative to the output folder) when images are saved, else ``clip.mp4#frame=000123``.
    With ``gt`` (a COCO dataset dict): the matching image's id and file_name; unmatched frames get
    None (and are counted in :attr:`unmatched`).
    """

    REMEMBER = 4096  # frames whose entry is kept for the next sink's lookup

    def __init__(self, root: str | Path | None = None, gt: dict[str, Any] | None = None,
                 image_dir: str | None = None, image_ext: str = ".jpg") -> None:
        self.root = root if root is not None and Path(root).is_dir() else None
        self.matcher = FileNameMatcher(gt["images"]) if gt is not None else None
        self.image_dir, self.image_ext = image_dir, image_ext
        self.count = 0  # ids handed out (without gt)
        self.unmatched = 0  # frames not in gt
        self.unmatched_example: str | None = None
        # Sinks look a frame up one after another, so only recent frames need remembering; the bound
        # keeps memory flat on endless streams.
        self._by_source: OrderedDict[str, dict[str, Any] | None] = OrderedDict()

    def file_name(self, frame: FrameRef | str) -> str:
        """``file_name`` of ``frame`` (or a still image's path); undecodable file-name bytes stay lone
        surrogates, which :func:`dumps` writes as ``\\udcXX`` escapes (see :data:`FILE_NAME_RULE`)."""
        if self.image_dir is not None and video_of(frame) is not None:
            rel = output_relpath(frame, self.root, self.image_ext)
            return (PurePosixPath(self.image_dir) / rel).as_posix()
        return frame_file_name(frame, self.root, escape=False)

    def lookup(self, frame: FrameRef | str, width: int, height: int, **extra: Any) -> dict[str, Any] | None:
        """The ``images`` entry of ``frame`` (created on first sight; a plain string is a still
        image's path), or None if not in ``gt``."""
        source = frame if isinstance(frame, str) else frame.source
        if source in self._by_source:
            self._by_source.move_to_end(source)
            return self._by_source[source]
        entry: dict[str, Any] | None
        if self.matcher is not None:
            im = self.matcher.match(source)
            if im is None:
                self.unmatched += 1
                self.unmatched_example = self.unmatched_example or safe_name(source)
                entry = None
            else:
                entry = {"id": int(im["id"]), "file_name": im["file_name"], "width": int(width),
                         "height": int(height), **extra}
        else:
            self.count += 1
            entry = {"id": self.count, "file_name": self.file_name(frame), "width": int(width),
                     "height": int(height), **extra}
        self._by_source[source] = entry
        if len(self._by_source) > self.REMEMBER:
            self._by_source.popitem(last=False)
        return entry


class VideoIndex:
    """The ``videos`` of a COCO file (TAO / CocoVID layout, see the module doc): ids 1..N in the order
    videos (or streams) are first seen; ``lookup(frame, width, height)`` gives the frame's
    ``{"video_id", "frame_id"}`` keys (None for a still image)."""

    def __init__(self) -> None:
        self.videos: list[dict[str, Any]] = []
        self._ids: dict[str, int] = {}

    def lookup(self, frame: FrameRef | str, width: int, height: int) -> dict[str, int] | None:
        parsed = video_of(frame)
        if parsed is None:
            return None
        video, index = parsed
        if video not in self._ids:
            self._ids[video] = len(self.videos) + 1
            name = video if "://" in video else PurePosixPath(_posix(video)).name
            self.videos.append({"id": self._ids[video], "name": name, "width": int(width),
                                "height": int(height)})
        return {"video_id": self._ids[video], "frame_id": int(index)}


def gt_category_ids(gt: dict[str, Any], class_names: Sequence[str],
                    category_ids: Sequence[int]) -> tuple[list[int], list[str]]:
    """Category ids of ``class_names`` in ``gt`` (matched by name) and the names not found (which keep
    ``category_ids``). None found at all is a DataError."""
    gt_cats = {c["name"]: c["id"] for c in gt["categories"] if isinstance(c, dict) and "name" in c and "id" in c}
    missing = [n for n in class_names if n not in gt_cats]
    real = [n for n in class_names if n != "background"]
    if real and all(n in missing for n in real):
        raise DataError(f"--coco-gt: none of the model's classes {list(class_names)} are categories of that file "
                        f"({sorted(gt_cats)})")
    return [gt_cats.get(n, cid) for n, cid in zip(class_names, category_ids)], [n for n in missing if n != "background"]

