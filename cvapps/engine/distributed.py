"""DistributedDataParallel set-up for ``torchrun --nproc_per_node=N -m cvapps train ...``.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them everything here is a no-op and training
runs in one process. nccl on CUDA, gloo on CPU. Each process sees ``train.batch`` images per
step, so the effective batch is ``train.batch * N`` (see README for learning-rate scaling).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DistributedSampler

from cvapps.engine.device import resolve_device


@dataclass
class DistContext:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_spec: str = "auto") -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend)
    return DistContext(True, rank, world, local_rank, device)


def train_sampler(dataset, ctx: DistContext, seed: int) -> DistributedSampler | None:
    if not ctx.enabled:
        return None
    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    if not ctx.enabled:
        return model
    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    # Some heads (e.g. Faster R-CNN on images without boxes) leave parameters unused in a step.
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        torch_dist.barrier()


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
