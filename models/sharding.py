"""Evaluation across processes (torchrun: gloo on CPU, NCCL on GPUs): shard batches, merge exactly.

Batches of a cell are dealt round-robin to the ranks (batch b goes to rank b mod world), and each
batch's attack randomness is seeded from (cell, b), never from what ran before on that rank, so
every batch computes the same numbers whichever process runs it. Integer counts are summed and
per-sample values gathered, so the merged cell equals the single-process cell exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch


class Shard(NamedTuple):
    """This process's rank and the number of processes evaluating together."""

    rank: int
    world: int


SINGLE = Shard(0, 1)


def current_shard() -> Shard:
    """The torch.distributed rank and world size when a process group is up, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return SINGLE


def own_batches(data: Iterable[tuple[torch.Tensor, torch.Tensor]], shard: Shard) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(global batch index, images, labels) for the batches this rank evaluates."""
    for index, (images, labels) in enumerate(data):
        if index % shard.world == shard.rank:
            yield index, images, labels


def batch_seed(cell_digest: str, index: int) -> int:
    """Seed of batch `index` of a cell: independent of the rank and of the other batches."""
    blob = hashlib.sha256(f"{cell_digest}/{index}".encode()).hexdigest()
    return int(blob[:15], 16)


def batch_generator(cell_digest: str, index: int) -> torch.Generator:
    """A CPU generator seeded with `batch_seed` (attacks draw their random starts on CPU)."""
    return torch.Generator().manual_seed(batch_seed(cell_digest, index))


def sum_counts(counts: list[int], shard: Shard) -> list[int]:
    """Element-wise sum of integer counts over ranks (identity for one process)."""
    if shard.world == 1:
        return list(counts)
    import torch.distributed as dist

    t = torch.tensor(counts, dtype=torch.int64)
    dist.all_reduce(t)
    return [int(v) for v in t]


def gather_values(values: torch.Tensor, shard: Shard) -> torch.Tensor:
    """Concatenation over ranks (rank order) of 1-D float tensors of any lengths."""
    if shard.world == 1:
        return values
    import torch.distributed as dist

    parts: list[object] = [None] * shard.world
    dist.all_gather_object(parts, values.detach().cpu())
    return torch.cat([p for p in parts if isinstance(p, torch.Tensor)])
