"""Classification datasets from class folders: ``ROOT/{train,val}/<class>/*.jpg``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from cvapps.data.augment import SamplePipeline
from cvapps.errors import DataError, ImageReadError
from cvapps.io.images import IMAGE_EXTENSIONS, read_image


def scan_class_folders(split_dir: Path, class_names: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """Sorted ``[(path, class_index)]`` and the class names (sorted folder names unless given)."""
    if not split_dir.is_dir():
        raise DataError(f"dataset folder not found: {split_dir}")
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = class_names or [p.name for p in folders]
    if not names:
        raise DataError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<images>)")
    samples = []
    for index, name in enumerate(names):
        folder = split_dir / name
        if not folder.is_dir():
            raise DataError(f"{split_dir}: class folder {name!r} is missing")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"{folder}: class folder has no images")
        samples += [(str(p), index) for p in files]
    return samples, names


class ClassFolderDataset(Dataset):
    """Yields ``(image uint8 (C, S, S), class_index)``, or None for a file that cannot be read."""

    def __init__(self, samples: list[tuple[str, int]], pipeline: SamplePipeline) -> None:
        self.samples, self.pipeline = samples, pipeline

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Any:
        path, label = self.samples[i]
        try:
            image = read_image(path)
        except ImageReadError as exc:
            print(f"skipped {exc}", file=sys.stderr)
            return None
        return self.pipeline(image)["image"], label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]
