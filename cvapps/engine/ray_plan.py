"""The planning step of :mod:`cvapps.engine.ray_predict`, on the driver: a source -> its items of work,
and a check that a cluster address answers as Ray before Ray is asked to join it.

An item is an image file or a range of a video's frames; its key is what the manifest records, so a
resumed run skips exactly the items that are done.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

import cv2

from cvapps.errors import CvappsError
from cvapps.io.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from cvapps.io.sources import describe_source, source_paths


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

    source: a :class:`~cvapps.io.sources.SourceSpec` or anything
    :func:`~cvapps.io.sources.describe_source` takes (decided by that one rule): a folder
    (recursive, sorted), a glob, an image, a video, a ``.txt`` list or a list of paths (folders,
    images and videos mixed); paths are spelled as the single-process sources spell them
    (:func:`~cvapps.io.sources.source_paths`), so frame names and file names in the outputs agree.
    Live streams, webcams and streams files are refused.
    """
    spec = describe_source(source)
    if spec.is_live:
        raise CvappsError(f"--ray reads files (folders, globs, lists, videos), not live streams: {spec.text.strip()}")
    skipped: list[tuple[str, str]] = []
    paths = source_paths(spec, lambda path, reason: skipped.append((path, reason)))
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
            skipped.append((path, "not an image or video file"))
        seen.add(path)
    if not items and not skipped:
        raise CvappsError(f"no images or videos in {spec.text}")
    return items, skipped


# -- the cluster address -----------------------------------------------------------------------

PROBE_S = 5.0  # seconds for the TCP connect, and again for the server's first bytes
# HTTP/2 client preface + an empty SETTINGS frame: a gRPC server (Ray's GCS and its client server
# both are) answers with a SETTINGS frame (type 4) of its own.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def parse_ray_address(address: str) -> tuple[str, int]:
    """``ray://HOST[:PORT]`` (Ray client, default port 10001) or ``HOST[:PORT]`` (a head node's GCS,
    default 6379) -> (host, port); anything else is a one-line CvappsError."""
    text = address.strip()
    usage = f"--ray: want 'auto', HOST:PORT or ray://HOST[:PORT], got {text!r}"
    default = 6379
    if text.startswith("ray://"):
        text, default = text[len("ray://"):], 10001
    if "://" in text or "/" in text.rstrip("/") or not text:
        raise CvappsError(usage)
    text = text.rstrip("/")
    m = re.fullmatch(r"\[(?P<v6>[^\]]+)\](?::(?P<p6>\d+))?|(?P<host>[^:\[\]]+)(?::(?P<port>\d+))?", text)
    if m is None:
        raise CvappsError(usage)
    host = m["v6"] or m["host"]
    port = int(m["p6"] or m["port"] or default)
    if not 0 < port < 65536:
        raise CvappsError(f"--ray: port {port} is out of range 1..65535")
    return host, port


def check_ray_address(address: str | None, timeout: float = PROBE_S) -> None:
    """Before ``ray.init(address=...)``, which waits minutes on a closed port and fails with a long
    traceback on a server that is not Ray: the address must accept a TCP connection and answer as an
    HTTP/2 (gRPC) server, within ``timeout`` seconds each. None / "local" / "auto" are left to Ray
    (its own lookup), and so is the answer check when Ray uses TLS (``RAY_USE_TLS``)."""
    if address is None or address.strip() in ("", "local", "auto"):
        return
    host, port = parse_ray_address(address)
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        raise CvappsError(f"--ray: cannot resolve the host of {address!r}") from None
    except TimeoutError:
        raise CvappsError(f"--ray: no answer from {where} within {timeout:g} s (is the Ray head running "
                          "and the port open?)") from None
    except OSError as exc:
        raise CvappsError(f"--ray: cannot connect to {where}: {exc.strerror or exc} (is a Ray head "
                          "running there?)") from None
    with sock:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        head = b""
        deadline = time.monotonic() + timeout  # one bound for the whole answer, however it trickles in
        try:
            sock.sendall(_H2_PREFACE)
            while len(head) < 9 and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except OSError:
            pass
    if len(head) < 9 or head[3] != 0x04:
        raise CvappsError(f"--ray: {where} answers, but not as a Ray cluster (no gRPC server there); "
                          "give the head node's address (ray://HOST:10001 or HOST:6379)")
