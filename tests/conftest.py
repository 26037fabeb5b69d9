"""Shared fixtures: small generated datasets (session-scoped, so each is made once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep test runs quiet and reproducible on the 2-core CI machine.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "shapes"


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory) -> Path:
    """A small shapes dataset in every layout (COCO, masks, YOLO txt, class folders, a short video)."""
    from cvapps.data.synth import SynthSpec, generate_shapes

    root = tmp_path_factory.mktemp("shapes") / "shapes"
    generate_shapes(root, SynthSpec(n_train=16, n_val=8, imgsz=96, n_crops_per_class=(12, 6), crop_size=48,
                                    video_frames=24, video_size=(160, 120)), progress=False)
    return root


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, bool]]:
    """The generated fault corpus (tests/fault_corpus.py): folder and file -> expected readable."""
    from fault_corpus import make_fault_corpus

    folder = tmp_path_factory.mktemp("corpus")
    return folder, make_fault_corpus(folder)
