"""Every random source of a training run, seeded from ``train.seed``.

The same config and seed give the same model on the CPU: two runs write identical ``metrics.csv``
(except the wall-clock ``time_s`` column). The sources:

* Python's ``random``, NumPy's global generator and torch's (weights init, dropout, Faster R-CNN's
  box sampling): :func:`seed_everything`, once per run (``seed + rank`` under DDP);
* the shuffle order: the DataLoader's own generator, reseeded each epoch in the training loop;
* augmentation: albumentations keeps its own generators inside each ``Compose`` (they ignore the
  global seeds). :func:`seed_augment` reseeds them from ``(seed, epoch)`` at every epoch in the main
  process, so a resumed run augments its epochs as an uninterrupted one would;
* DataLoader workers: each worker holds a copy of the dataset made when it starts; :func:`worker_init`
  seeds its copy (and its ``random``/NumPy) from torch's per-worker seed, which the loader derives
  from its seeded generator, so workers differ from each other but not from run to run.

On CUDA some kernels stay non-deterministic even so (atomic adds in the backward of interpolation,
``roi_align`` and scatter/index ops; cuDNN algorithm choice): GPU runs agree closely, not bit for bit.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Subset, get_worker_info

# Seeds for albumentations and NumPy must fit in 32 bits.
_SEED_MOD = 2**32


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % _SEED_MOD)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (run seed, epoch), far apart for neighbouring seeds (a plain ``seed + epoch`` would
    make run seed 1 epoch 0 repeat run seed 0 epoch 1)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def pipelines(dataset: Any) -> Iterator[Any]:
    """The sample pipelines (``dataset.pipeline``) inside a dataset, through Subset/ConcatDataset."""
    if isinstance(dataset, Subset):
        yield from pipelines(dataset.dataset)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            yield from pipelines(part)
    elif getattr(dataset, "pipeline", None) is not None:
        yield dataset.pipeline


def seed_augment(dataset: Any, seed: int) -> None:
    """Reseed the albumentations pipelines of ``dataset`` (those with random transforms)."""
    for pipeline in pipelines(dataset):
        augment = getattr(pipeline, "augment", None)
        if augment is not None:
            augment.set_random_seed(seed % _SEED_MOD)


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed this worker's ``random``, NumPy and its dataset copy's
    augmentation from torch's worker seed (base seed from the loader's generator + worker id)."""
    seed = torch.initial_seed() % _SEED_MOD
    random.seed(seed)
    np.random.seed(seed)
    info = get_worker_info()
    if info is not None:
        seed_augment(info.dataset, seed)
