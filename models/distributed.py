"""Data-parallel fine-tuning under `torchrun`: process-group set-up and gradient averaging.

Gloo on CPU (how the 2-process test runs), NCCL on CUDA; a single process needs neither.
"""

from __future__ import annotations

import os

import torch


def init_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) under `torchrun` (gloo on CPU, nccl on CUDA); (0, 1, device) otherwise."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """All-reduce (mean) the gradients of `params` across ranks in one flat buffer.

    Explicit rather than `DistributedDataParallel` because the method losses call the image tower
    several times per step through `PixelCLIP` (attack, paired forward), which a DDP wrapper's
    one-forward-one-backward contract does not fit; the result is the same averaged gradient.
    """
    if world <= 1:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in params if p.grad is not None]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, avg in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(avg)
