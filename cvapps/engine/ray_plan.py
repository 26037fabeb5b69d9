"""The planning step of :mod:`cvapps.engine.ray_predict`, on the driver: a source -> its items of work.

An item is an image file or a range of a video's frames; its key is what the manifest records, so a
resumed run skips exactly the items that are done.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from cvapps.errors import CvappsError
from cvapps.io.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from cvapps.io.sources import is_url
from cvapps.io.sources.files import expand_paths, glob_images, iter_image_files, txt_lines


@dataclass(frozen=True)
class Item:
    """One unit of work: an image file, or frames ``start <= index < end`` of a video (end -1: to EOF)."""

    key: str
    order: int
    kind: str
    path: str
    start: int = 0
    end: int = -1


def _video_ranges(path: str, chunk: int) -> list[tuple[int, int]]:
    """``[(start, end)]`` ranges of ``chunk`` frames; the last one runs to the end of the file (-1), so a
    frame count the container under-reports loses nothing (one over-reported gives an empty range)."""
    cap = cv2.VideoCapture(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    finally:
        cap.release()
    starts = list(range(0, max(n, 1), chunk))
    return [(s, starts[i + 1] if i + 1 < len(starts) else -1) for i, s in enumerate(starts)]


def plan_items(source: Any, chunk: int = 32) -> tuple[list[Item], list[tuple[str, str]]]:
    """The work of ``source`` in its order, and ``(path, reason)`` of entries the walk left out.

    source: a folder (recursive, sorted), a glob, an image, a video, a ``.txt`` list or a list of
    paths (folders, images and videos mixed); paths are spelled as the single-process sources spell
    them, so frame names and file names in the outputs agree. Live streams and webcams are refused.
    """
    skipped: list[tuple[str, str]] = []
    skip = lambda path, reason: skipped.append((path, reason))
    if isinstance(source, (list, tuple)):
        paths = expand_paths(iter([os.fspath(p) for p in source]), skip)
    else:
        text = os.fspath(source).strip()
        local = os.path.expanduser(text)
        if is_url(text) or (text.isdigit() and not os.path.exists(local)):
            raise CvappsError(f"--ray reads files (folders, globs, lists, videos), not live streams: {text}")
        if os.path.isdir(local):
            paths = iter_image_files(local, skip)
        elif os.path.isfile(local) and local.lower().endswith(".txt"):
            paths = expand_paths(txt_lines(Path(local)), skip)
        elif os.path.exists(local):
            paths = iter([local])
        elif re.search(r"[*?[]", text):
            paths = glob_images(local)
        else:
            raise CvappsError(f"source not found: {text}")
    items: list[Item] = []
    seen: set[str] = set()
    for path in paths:
        suffix = os.path.splitext(path)[1].lower()
        if suffix in VIDEO_EXTENSIONS and os.path.isfile(path):
            for start, end in _video_ranges(path, chunk):
                items.append(Item(f"{path}#frames={start}:{end}", len(items), "video", path, start, end))
        elif path not in seen:  # a file listed twice is predicted once
            items.append(Item(path, len(items), "image", path))
        elif suffix not in IMAGE_EXTENSIONS:
            skip(path, "not an image or video file")
        seen.add(path)
    if not items and not skipped:
        raise CvappsError(f"no images or videos in {source}")
    return items, skipped
