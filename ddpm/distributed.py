"""Data-parallel training on several GPUs (or CPU processes): PyTorch's DistributedDataParallel, launched by torchrun.

    torchrun --standalone --nproc_per_node 4 -m ddpm.cli train ...   (the train rule does this for train.gpus > 1)

Every process draws the same global batch of ``batch_size`` (the paper's 128) from the same generator and keeps
its own contiguous slice, so the data, timesteps and noise of a step are those of a one-process run; DDP averages
the slices' gradients, which is the gradient of the global batch's mean loss. Rank 0 alone writes files and logs
to MLflow.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the ``size`` processes of one training (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(self, global_batch: int) -> slice:
        """This process's share of a global batch; the global batch must split evenly."""
        if global_batch % self.size:
            raise ValueError(f"the batch size {global_batch} does not split evenly over {self.size} processes "
                             f"(train.gpus × train.nodes): pick a batch size divisible by {self.size}")
        share = global_batch // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def mean_and_any(self, value: torch.Tensor, flag: bool) -> tuple[torch.Tensor, bool]:
        """The mean of a scalar over the processes, and whether any process raised ``flag`` — in one collective,
        so every process takes the same decision (stop on a NaN loss, stop on a preemption signal) at the same step."""
        if not self.distributed:
            return value, flag
        both = torch.stack([value.detach().float().reshape(()), torch.tensor(float(flag), device=value.device)])
        dist.all_reduce(both)
        return both[0] / self.size, bool(both[1].item() > 0)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor`` concatenated in rank order (the global batch's values, from the slices)."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        objects = [None] * self.size
        dist.all_gather_object(objects, obj)
        return objects

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched_world() -> World:
    """The world torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    return World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def joined(device: str | torch.device):
    """Join torchrun's process group for the duration; yields ``(world, device)`` with this process's device (GPU
    ``LOCAL_RANK`` on CUDA, over NCCL; the CPU over Gloo). Without torchrun: a world of one and ``device``."""
    world, device = launched_world(), torch.device(device)
    if not world.distributed:
        yield world, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield world, device
    finally:
        if owned:
            dist.destroy_process_group()


def data_parallel(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel (which averages the gradients in backward), or ``model`` itself
    in a world of one. The parameters stay ``model``'s: the optimiser, EMA and checkpoints keep using it."""
    if not world.distributed:
        return model
    # Gradients as views into the all-reduce buckets: no copy, and no second set of gradients in memory.
    # Before the views exist, DDP warns that a 1×1 convolution's weight gradient has other strides than its
    # bucket: they differ only on the size-1 dimensions, where strides mean nothing (the memory order is the same).
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                     gradient_as_bucket_view=True)


def threads_per_process(threads: int) -> int:
    """The CPU threads of one of the processes torchrun started on this node, sharing ``threads`` between them."""
    return max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
