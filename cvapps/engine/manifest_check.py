"""Validation of resume-manifest records (:mod:`cvapps.engine.manifest`) before any is decoded.

A manifest is a file in OUT, so anyone who can write there can put anything in it: a mask size of
60000 x 60000 (a 3.6 GB allocation when decoded), an RLE whose run lengths overrun the mask
(pycocotools' decoder does not check them: a heap overflow), ``"topk": 5`` or ``"frames": 7``
(a TypeError deep in a sink), a label past the class list (an IndexError). :class:`RecordCheck`
checks every stored record against the schema :func:`~cvapps.engine.manifest.encode_prediction`
writes and against the frame it belongs to (the width and height of the planned image or video,
read from its header); a record that fails is reported and its item predicted again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2

from cvapps.errors import CvappsError
from cvapps.io.images import MAX_IMAGE_PIXELS, image_size

MAX_LINE_BYTES = 64 << 20  # one record (one item) per line; anything longer is damaged
MAX_ITEMS = 1_000_000  # entries of any list in a record (boxes, frames, top-k, classes)
MASK_DTYPES = {"uint8", "int8", "uint16", "int16", "int32", "int64"}
SCORE_DTYPES = {"float16", "float32", "float64"}


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


def check_prediction(p: Any, h: int, w: int, classes: int | None = None) -> None:
    """Raise :class:`Bad` unless ``p`` is an encoded prediction for an ``h`` x ``w`` frame."""
    _need(isinstance(p, dict), "prediction is not an object")
    kind = p.get("type")
    if kind == "detections":
        _keys(p, {"type", "boxes", "scores", "labels"}, {"masks", "mask_size"}, "detections")
        n = len(_list(p["boxes"], "boxes"))
        for box in p["boxes"]:
            [_num(v) for v in _list(box, "a box", 4)]
        [_num(v) for v in _list(p["scores"], "scores", n)]
        [_label(v, classes) for v in _list(p["labels"], "labels", n)]
        if "masks" in p or "mask_size" in p:
            _need(p.get("mask_size") == [h, w], f"mask size {str(p.get('mask_size'))[:30]} is not the frame's [{h}, {w}]")
            _need(n * h * w <= 16 * MAX_IMAGE_PIXELS, f"{n} masks of {w} x {h} are too many to decode")
            _need(all(rle_fits(r, h, w) for r in _list(p.get("masks"), "masks", n)), "a mask is not an RLE of the frame's size")
    elif kind == "mask":
        _keys(p, {"type", "size", "dtype", "classes", "scores", "scores_dtype"}, what="mask")
        _need(p["size"] == [h, w], f"mask size {str(p['size'])[:30]} is not the frame's [{h}, {w}]")
        _need(p["dtype"] in MASK_DTYPES, "mask dtype is not an integer type")
        _need(isinstance(p["classes"], dict) and len(p["classes"]) <= 65536, "mask classes is not an object")
        for value, rle in p["classes"].items():
            _need(value.isdigit() and int(value) < 65536, f"mask value {value[:20]!r}")
            _need(rle_fits(rle, h, w), "a class mask is not an RLE of the frame's size")
        if p["scores"] is not None:
            [_num(v) for v in _list(p["scores"], "scores")]
            _need(p["scores_dtype"] in SCORE_DTYPES, "scores dtype is not a float type")
    elif kind == "classification":
        _keys(p, {"type", "label", "score", "topk"}, what="classification")
        _label(p["label"], classes)
        _num(p["score"])
        for pair in _list(p["topk"], "topk"):
            _list(pair, "a top-k entry", 2)
            _label(pair[0], classes)
            _num(pair[1])
    elif kind == "multitask":
        _keys(p, {"type", "detections", "segmentation", "labels", "label_scores"}, what="multitask")
        for part, want in (("detections", "detections"), ("segmentation", "mask")):
            if p[part] is not None:
                _need(isinstance(p[part], dict) and p[part].get("type") == want, f"{part} is not {want}")
                check_prediction(p[part], h, w, classes if part == "detections" else None)
        if p["labels"] is not None:
            [_label(v, classes) for v in _list(p["labels"], "labels")]
        if p["label_scores"] is not None:
            [_num(v) for v in _list(p["label_scores"], "label_scores")]
    else:
        raise Bad(f"unknown prediction type {str(kind)[:20]!r}")


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
