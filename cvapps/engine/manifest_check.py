"""Validation of resume-manifest records (:mod:`cvapps.engine.manifest`) before any is decoded.

A manifest is a file in OUT, so anyone who can write there can put anything in it: a mask size of
60000 x 60000 (a 3.6 GB allocation when decoded), an RLE whose run lengths overrun the mask
(pycocotools' decoder does not check them: a heap overflow), ``"topk": 5`` or ``"frames": 7``
(a TypeError deep in a sink), a label past the class list (an IndexError). :class:`RecordCheck`
checks every stored record against the schema :func:`~cvapps.engine.manifest.encode_prediction`
writes (a prediction's one JSON form, :mod:`cvapps.structures.prediction`) and against the frame it belongs to (the width and height of the planned image or video,
read from its header); a record that fails is reported and its item predicted again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import cv2

from cvapps.errors import CvappsError
from cvapps.io.images import MAX_IMAGE_PIXELS, image_size

MAX_LINE_BYTES = 64 << 20  # one record (one item) per line; anything longer is damaged
MAX_ITEMS = 1_000_000  # entries of any list in a record (boxes, frames, top-k, classes)


class Bad(Exception):
    """A record that does not hold: its reason (short, one line)."""


def _need(ok: bool, why: str) -> None:
    if not ok:
        raise Bad(why)


def _int(v: Any, lo: int = 0, hi: int = 2 ** 31) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi, f"{str(v)[:20]!r} is not an integer in range")
    return v


def _num(v: Any) -> float:
    _need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), f"{str(v)[:20]!r} is not a number")
    return float(v)


def _list(v: Any, what: str, n: int | None = None) -> list[Any]:
    _need(isinstance(v, list) and len(v) <= MAX_ITEMS, f"{what} is not a list")
    _need(n is None or len(v) == n, f"{what} has {len(v)} entries, not {n}")
    return v


def _keys(d: Any, required: set[str], optional: set[str] = frozenset(), what: str = "record") -> dict[str, Any]:
    _need(isinstance(d, dict), f"{what} is not an object")
    _need(required <= set(d) <= required | optional, f"{what} has keys {sorted(d)[:8]}")
    return d


def rle_fits(rle: Any, h: int, w: int) -> bool:
    """True when ``rle`` is a compressed COCO RLE of an ``h`` x ``w`` mask whose run lengths are
    all non-negative and add up to exactly ``h * w`` (decoded the way pycocotools' ``rleFrString`` does)."""
    if not (isinstance(rle, dict) and set(rle) == {"size", "counts"} and rle["size"] == [h, w]
            and isinstance(rle["counts"], str)):
        return False
    s, total, cnts, p = rle["counts"], 0, [], 0
    area = h * w
    while p < len(s):
        x = k = 0
        more = True
        while more:
            if p >= len(s) or k > 7:
                return False
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return False
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[-2]
        if x < 0 or total + x > area:
            return False
        cnts.append(x)
        total += x
    return total == area


def _label(v: Any, classes: int | None) -> int:
    return _int(v, 0, classes if classes is not None else 2 ** 31)


def _str(v: Any) -> str:
    _need(isinstance(v, str) and len(v) <= 4096, f"{str(v)[:20]!r} is not a name")
    return v


# A prediction's JSON form (cvapps.structures.prediction): each part's (required, optional) keys;
# the first required key says the part is there.
PART_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "detections": (("boxes", "scores", "labels", "names"), ("masks", "mask_size", "track_ids", "box_data")),
    "semantic": (("size", "classes"), ("class_scores", "extra_background")),
    "classification": (("label", "name", "score", "topk"), ()),
    "presence": (("present", "presence"), ()),
    "counts": (("counts",), ()),
}
BOX_DATA_DTYPE = re.compile(r"[<>|]?(b1|[iu][1248]|f[248]|U\d{1,4})")


def _ranked(v: Any, classes: int | None, what: str) -> int:
    """One ``{"label", "name", "score"}`` entry (top-k, present classes): its label."""
    _keys(v, {"label", "name", "score"}, what=what)
    _str(v["name"])
    _num(v["score"])
    return _label(v["label"], classes)


def _check_detections(p: dict[str, Any], h: int, w: int, classes: int | None) -> None:
    n = len(_list(p["boxes"], "boxes"))
    for box in p["boxes"]:
        [_num(v) for v in _list(box, "a box", 4)]
    [_num(v) for v in _list(p["scores"], "scores", n)]
    [_label(v, classes) for v in _list(p["labels"], "labels", n)]
    [_str(v) for v in _list(p["names"], "names", n)]
    if "masks" in p or "mask_size" in p:
        _need(p.get("mask_size") == [h, w], f"mask size {str(p.get('mask_size'))[:30]} is not the frame's [{h}, {w}]")
        _need(n * h * w <= 16 * MAX_IMAGE_PIXELS, f"{n} masks of {w} x {h} are too many to decode")
        _need(all(rle_fits(r, h, w) for r in _list(p.get("masks"), "masks", n)), "a mask is not an RLE of the frame's size")
    if "track_ids" in p:
        [_int(v, 0, 2 ** 62) for v in _list(p["track_ids"], "track_ids", n)]
    if "box_data" in p:
        _need(isinstance(p["box_data"], dict) and len(p["box_data"]) <= 64, "box_data is not an object")
        for key, column in p["box_data"].items():
            _keys(column, {"dtype", "values"}, what=f"box_data {key[:20]!r}")
            dtype = column["dtype"]
            _need(isinstance(dtype, str) and BOX_DATA_DTYPE.fullmatch(dtype) is not None, "box_data dtype")
            kind, width = dtype.lstrip("<>|")[0], int(dtype.lstrip("<>|")[1:])
            for v in _list(column["values"], "box_data values", n):
                if kind == "b":
                    _need(isinstance(v, bool), "box_data value is not a bool")
                elif kind == "U":
                    _need(isinstance(v, str) and len(v) <= width, "box_data value is not its string")
                elif kind in "iu":
                    _int(v, 0 if kind == "u" else -(1 << (8 * width - 1)), 1 << (8 * width - (kind == "i")))
                else:
                    _num(v)


def _check_semantic(p: dict[str, Any], h: int, w: int) -> None:
    _need(p["size"] == [h, w], f"mask size {str(p['size'])[:30]} is not the frame's [{h}, {w}]")
    seen = set()
    for c in _list(p["classes"], "mask classes"):
        _keys(c, {"label", "name", "pixels", "score", "rle"}, what="a mask class")
        seen.add(_int(c["label"], 1, 256))
        _str(c["name"])
        _int(c["pixels"], 0, h * w + 1)
        _num(c["score"])
        _need(rle_fits(c["rle"], h, w), "a class mask is not an RLE of the frame's size")
    _need(len(seen) == len(p["classes"]), "a mask class is there twice")
    if "class_scores" in p:
        [_num(v) for v in _list(p["class_scores"], "class_scores")]
    _need(p.get("extra_background", True) is True, "extra_background is not true")


def _check_counts(counts: Any) -> None:
    _keys(counts, {"lines", "zones"}, what="counts")
    for line in _list(counts["lines"], "count lines"):
        _keys(line, {"line", "in", "out", "classes"}, what="a count line")
        [_num(v) for v in _list(line["line"], "a line", 4)]
        [_int(line[k]) for k in ("in", "out")]
        _need(isinstance(line["classes"], dict), "line classes is not an object")
        for name, io in line["classes"].items():
            _keys(io, {"in", "out"}, what=f"line class {name[:20]!r}")
            [_int(io[k]) for k in ("in", "out")]
    for zone in _list(counts["zones"], "count zones"):
        _keys(zone, {"zone", "count", "classes"}, what="a count zone")
        [[_num(v) for v in _list(pt, "a zone point", 2)] for pt in _list(zone["zone"], "a zone")]
        _int(zone["count"])
        _need(isinstance(zone["classes"], dict), "zone classes is not an object")
        [_int(v) for v in zone["classes"].values()]


def check_prediction(p: Any, h: int, w: int, classes: int | None = None) -> None:
    """Raise :class:`Bad` unless ``p`` is a prediction's JSON form for an ``h`` x ``w`` frame."""
    _need(isinstance(p, dict), "prediction is not an object")
    known = {k for required, optional in PART_KEYS.values() for k in (*required, *optional)}
    _need(set(p) <= known, f"prediction has keys {sorted(p)[:8]}")
    for part, (required, optional) in PART_KEYS.items():
        if set(p) & {*required, *optional}:
            _need(set(required) <= set(p), f"the {part} part lacks keys {sorted(set(required) - set(p))}")
    if "boxes" in p:
        _check_detections(p, h, w, classes)
    if "size" in p:  # mask values are not class indices of a multitask model's names: not checked
        _check_semantic(p, h, w)
    if "label" in p:
        _label(p["label"], classes)
        _str(p["name"])
        _num(p["score"])
        [_ranked(t, classes, "a top-k entry") for t in _list(p["topk"], "topk")]
    if "present" in p:
        k = len([_num(v) for v in _list(p["presence"], "presence")])
        [_ranked(t, min(k, classes) if classes is not None else k, "a present class")
         for t in _list(p["present"], "present")]
    if "counts" in p:
        _check_counts(p["counts"])


class RecordCheck:
    """``check(record)`` -> None when the record holds, else why not (one short line).

    items: the run's planned items (:class:`~cvapps.engine.ray_plan.Item`), each record is checked
    against its own (records of other keys are never replayed and pass); classes: the class count
    labels must stay under (None: not checked). Frame sizes are read from the images' headers and
    the videos' properties, once each."""

    def __init__(self, items: list[Any] = (), classes: int | None = None) -> None:
        self.items = {it.key: it for it in items}
        self.classes = classes
        self._sizes: dict[str, tuple[int, int] | None] = {}

    def size(self, item: Any) -> tuple[int, int] | None:
        """``(width, height)`` of the item's frames, None when it cannot be read now."""
        if item.path not in self._sizes:
            try:
                if item.kind == "image":
                    self._sizes[item.path] = image_size(item.path)
                else:
                    cap = cv2.VideoCapture(item.path)
                    try:
                        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
                    finally:
                        cap.release()
                    self._sizes[item.path] = size if min(size) > 0 else None
            except (CvappsError, OSError, cv2.error):
                self._sizes[item.path] = None
        return self._sizes[item.path]

    def __call__(self, record: Any) -> str | None:
        try:
            self._check(record)
        except Bad as exc:
            return str(exc)
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError, OverflowError) as exc:
            return f"cannot be checked ({type(exc).__name__})"  # a shape no rule above foresaw
        return None

    def _check(self, record: Any) -> None:
        _need(isinstance(record, dict) and isinstance(record.get("key"), str), "not a manifest record")
        item = self.items.get(record["key"])
        if "skipped" in record:
            _keys(record, {"key", "skipped"})
            _need(isinstance(record["skipped"], str) and len(record["skipped"]) <= 4096, "skipped is not a reason")
            return
        _keys(record, {"key", "frames"})
        frames = _list(record["frames"], "frames")
        if item is None:  # not planned by this run: never replayed, only its shape is checked
            return
        size = self.size(item)
        _need(size is not None, f"{item.path} cannot be read now")
        if item.kind == "image":
            _need(len(frames) == 1, f"an image record has {len(frames)} frames")
        last = item.start - 1
        for f in frames:
            _keys(f, {"source", "index", "timestamp", "width", "height", "prediction"}, what="frame")
            _need(isinstance(f["source"], str) and f["source"].startswith(item.path), "frame source is not the item's")
            index = _int(f["index"], 0)
            _need(index > last and (item.kind == "image" or item.end < 0 or index < item.end),
                  f"frame index {index} is outside the item's range")
            last = index
            _num(f["timestamp"])
            w, h = _int(f["width"], 1), _int(f["height"], 1)
            # a video's rotation metadata may swap what OpenCV's properties report
            _need((w, h) == size or (item.kind == "video" and (h, w) == size),
                  f"frame size {w} x {h} is not the item's {size[0]} x {size[1]}")
            check_prediction(f["prediction"], h, w, self.classes)


def classes_of(sinks: list[Any]) -> int | None:
    """The fewest class names any sink maps labels through (labels must stay under it), or None."""
    counts = [len(s.class_names) for s in sinks if isinstance(getattr(s, "class_names", None), list)]
    return min(counts) if counts else None


Check = Callable[[Any], "str | None"]
