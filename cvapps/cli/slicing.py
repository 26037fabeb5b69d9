"""The large-image options every predict command shares: ``--slice``, ``--slice-overlap``,
``--slice-merge``, ``--slice-full`` (sliced inference: :mod:`cvapps.engine.slicing`), ``--imgsz``
(the input size: :mod:`cvapps.engine.input_size`) and ``--allow-large`` (read by ``run_common``); ``load_options(args)`` turns them into the
keywords of :func:`cvapps.api.load`."""

from __future__ import annotations

import argparse
from typing import Any

from cvapps.errors import CvappsError


def add_slice_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--imgsz", type=int, default=None, metavar="PX",
                   help="input size to predict at (long side, a multiple of 32; default: the model's training size; "
                        "refused for exported models, whose size is fixed)")
    p.add_argument("--slice", default=None, metavar="PX|auto",
                   help="predict each frame in overlapping PX x PX slices (auto: the model's input size), batched, "
                        "merged back into one result per frame: for large images with small objects")
    p.add_argument("--slice-overlap", type=float, default=0.2, metavar="F",
                   help="fraction of a slice its neighbours share (default 0.2)")
    p.add_argument("--slice-merge", default="nms", choices=("nms", "nmm"),
                   help="how boxes of neighbouring slices merge: nms (default) or nmm (greedy merging, as SAHI)")
    p.add_argument("--allow-large", action="store_true",
                   help="read images of more than 89 M pixels (up to 2^30; e.g. 10,000 x 10,000 aerial scenes) when "
                        "you know they are real (the 256 MiB file cap stays: --max-file-mb)")
    p.add_argument("--slice-full", action="store_true",
                   help="with --slice: also predict the whole frame once (for objects larger than a slice)")


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """``{"imgsz", "slice"}`` for :func:`cvapps.api.load` from the options above (checked)."""
    # imported here: it loads torch, which `cvapps --help` must not wait for
    from cvapps.engine.slicing import slice_options

    size = getattr(args, "slice", None)
    if size is not None and getattr(args, "ray", None):
        raise CvappsError("--slice does not run on --ray (its workers predict whole frames): drop one")
    slicing = slice_options(size, getattr(args, "slice_overlap", 0.2), getattr(args, "slice_merge", "nms"),
                            getattr(args, "slice_full", False)) if size is not None else None
    return {"imgsz": getattr(args, "imgsz", None), "slice": slicing}
