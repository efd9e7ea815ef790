"""Which samples each reader of a stream takes, so that readers never overlap and none starves.

A reader is one (distributed rank, DataLoader worker) pair. Each epoch the files are put in an order (the
seed's and epoch's shuffle in training, as listed otherwise); with at least as many files as readers, reader
i of n takes every n-th file starting at i; with fewer, every reader goes through all the files and keeps
every n-th sample, so no rank waits on an empty share.

Resuming: a DataLoader takes batches from its workers in turn (batch b from worker b % workers), so a rank
that has taken `samples` samples has taken a known number from each worker. On resume each worker skips its
share and plays the role of the worker whose batch comes next, which makes the resumed stream the tail of
the uninterrupted one for the same world size, worker count and batch size.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class Reader:
    """A (rank, worker) pair; `worker` is the role the worker plays, which differs from its id on resume."""

    rank: int
    world_size: int
    worker: int
    workers: int

    @property
    def index(self) -> int:
        return self.rank * self.workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.workers

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.world_size} worker {self.worker}/{self.workers}"


def process_group_rank() -> tuple[int, int] | None:
    """torch.distributed's (rank, world size), or None where no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def distributed_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments when given, else the process group's, else (0, 1)."""
    if rank is None and world_size is None:
        return process_group_rank() or (0, 1)
    if rank is None or world_size is None or not 0 <= rank < world_size:
        raise ValueError(f"rank and world_size go together, with 0 <= rank < world_size; got {rank}, {world_size}")
    return rank, world_size


def epoch_share(files: Sequence[str], epoch: int, seed: int, shuffle: bool, reader: Reader) -> tuple[list[str], int]:
    """(files to read, stride): `reader` reads the files and keeps samples whose running index i has
    i % stride == reader.index % stride (stride 1 keeps them all)."""
    order = list(files)
    if shuffle:
        random.Random(f"{seed}:{epoch}").shuffle(order)
    if len(order) >= reader.count:
        return order[reader.index::reader.count], 1
    return order, reader.count


def resume_role(samples: int, batch_size: int, worker: int, workers: int) -> tuple[int, int]:
    """(role, samples to skip) of DataLoader worker `worker` when its rank has taken `samples` samples."""
    batches = samples // batch_size
    role = (worker + batches) % workers
    taken = (batches - role + workers - 1) // workers  # batches b < `batches` with b % workers == role
    return role, taken * batch_size
