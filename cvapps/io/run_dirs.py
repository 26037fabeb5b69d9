"""Output folders of runs: numbered defaults that never mix two runs, and no empty folder left by a failure.

* :func:`numbered_run`: ``runs/detect/predict``, then ``predict2``, ``predict3``, ... (as ultralytics
  names them), so a new run never adds its files to an earlier run's; ``exist_ok`` reuses the first.
* :func:`removed_if_failed`: a block that creates OUT and then fails before writing anything in it
  leaves no empty OUT (nor the empty parents it made) behind.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

PathLike = str | os.PathLike[str]


def numbered_run(base: PathLike, exist_ok: bool = False) -> Path:
    """``base`` if it does not exist yet (or ``exist_ok``), else ``base2``, ``base3``, ... the first free."""
    base = Path(base)
    if exist_ok or not (base.exists() or base.is_symlink()):
        return base
    for n in itertools.count(2):
        candidate = base.with_name(f"{base.name}{n}")
        if not (candidate.exists() or candidate.is_symlink()):
            return candidate
    raise AssertionError("unreachable")  # itertools.count never ends


def missing_folders(out: PathLike) -> list[Path]:
    """``out`` and its ancestors that do not exist yet, deepest first (what writing into it creates)."""
    missing = []
    for folder in (Path(out), *Path(out).parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


@contextlib.contextmanager
def removed_if_failed(out: PathLike | None) -> Iterator[None]:
    """Run the block; if it raises (an error, Ctrl-C), remove the folders of ``out`` it created that are
    still empty, deepest first (a folder holding anything, e.g. a checkpoint, is kept)."""
    made = missing_folders(out) if out is not None else []
    try:
        yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep it and its parents
                break
        raise
