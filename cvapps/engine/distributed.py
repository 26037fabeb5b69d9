"""DistributedDataParallel set-up for ``torchrun --nproc_per_node=N -m cvapps train ...``.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them everything here is a no-op and training
runs in one process. nccl on CUDA, gloo on CPU. Each process sees ``train.batch`` images per
step, so the effective batch is ``train.batch * N`` (see docs/scaling_and_robustness.md for
learning-rate scaling). Only rank 0 evaluates and writes checkpoints, logs and plots.

Decisions that change the control flow of a step (skip it on a non-finite loss, stop training)
must be taken by every rank together, or the ranks wait on each other's all-reduce for ever:
:func:`all_true` makes one rank's verdict everyone's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DistributedSampler

from cvapps.checkpoint import atomic_write
from cvapps.engine.device import resolve_device
from cvapps.errors import CvappsError

#: When set to a folder, every rank writes ``rank<R>.pt`` (its final state dict) there; tests use
#: it to check that DDP kept the replicas identical.
DUMP_ENV = "CVAPPS_DEBUG_DUMP_RANK_WEIGHTS"


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


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise CvappsError(f"WORLD_SIZE > 1 but {name} is missing or not an integer; "
                          "start distributed training with torchrun --nproc_per_node=N -m cvapps train ...") from None


def setup(device_spec: str = "auto") -> DistContext:
    """Join the process group torchrun described (no-op without WORLD_SIZE > 1).

    On CUDA every process takes GPU ``LOCAL_RANK`` (an index in ``device_spec`` is ignored);
    on CPU the ranks share the machine's cores and talk over gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    rank, local_rank = _env_int("RANK"), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "mps":
        # Neither nccl nor gloo moves MPS tensors; DDP on Apple GPUs is not supported by PyTorch.
        raise CvappsError("distributed training on MPS is not supported; use train.device=cpu with torchrun")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CvappsError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s); "
                              "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend)
    return DistContext(True, rank, world, local_rank, device)


def train_sampler(dataset, ctx: DistContext, seed: int) -> DistributedSampler | None:
    """Each rank gets a disjoint 1/N of the (shuffled, padded to a multiple of N) train set."""
    if not ctx.enabled:
        return None
    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)


def wrap(model: nn.Module, ctx: DistContext, *, find_unused: bool = True) -> nn.Module:
    """DDP around ``model`` (rank 0's weights and buffers are broadcast to the others here);
    ``find_unused``: the task's ``Task.ddp_find_unused_parameters``."""
    if not ctx.enabled:
        return model
    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def all_true(flag: bool | torch.Tensor, ctx: DistContext) -> bool:
    """True only if ``flag`` holds on every rank (a MIN all-reduce); plain ``bool`` without DDP."""
    value = bool(flag.item()) if isinstance(flag, torch.Tensor) else bool(flag)
    if not ctx.enabled:
        return value
    t = torch.tensor([1 if value else 0], dtype=torch.int32, device=ctx.device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
    return bool(t.item())


def all_finite(loss: torch.Tensor, ctx: DistContext) -> bool:
    """Is ``loss`` finite on every rank? All ranks skip the step together when one is not."""
    return all_true(torch.isfinite(loss.detach()).all(), ctx)


def average_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Average floating-point buffers (BatchNorm running mean/var) over the ranks, in place.

    DDP keeps parameters identical but each rank updates running statistics from its own
    images (SyncBatchNorm would sync them, but only on GPUs); averaging at the end of an epoch,
    as timm's ``distribute_bn`` does, gives rank 0's evaluation and checkpoint the statistics of
    all the data and leaves every replica identical.
    """
    if not ctx.enabled:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            torch_dist.all_reduce(buf.data, op=torch_dist.ReduceOp.SUM)
            buf.data.div_(ctx.world_size)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        torch_dist.barrier()


def dump_rank_weights(model: nn.Module, ctx: DistContext) -> None:
    """Debug hook (``CVAPPS_DEBUG_DUMP_RANK_WEIGHTS=DIR``): each rank saves its own state dict."""
    folder = os.environ.get(DUMP_ENV)
    if not folder:
        return
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(Path(folder) / f"rank{ctx.rank}.pt", lambda tmp: torch.save(state, tmp))  # makes the folder


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
