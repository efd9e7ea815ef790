"""Length-grouped sampling: batches of similar length, in random order.

Sorting within large chunks and then keeping the sorted order (as transformers' LengthGroupedSampler
does) feeds the model long runs of one kind of sample; over a short run that interference costs more
than padding. Here the batches are shuffled after grouping.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch.utils.data import Sampler


class GroupedByLength(Sampler[int]):
    """Indices in batches of similar length; `group` batches are sorted together, then all batches shuffle."""

    def __init__(self, lengths: list[int], batch_size: int, group: int = 8, seed: int = 0) -> None:
        self.lengths, self.batch_size, self.group, self.seed = lengths, batch_size, group, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        chunk = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), chunk):
            ranked = sorted(order[start : start + chunk], key=self.lengths.__getitem__)
            batches += [ranked[i : i + self.batch_size] for i in range(0, len(ranked), self.batch_size)]
        rng.shuffle(batches)
        self.epoch += 1
        return iter([i for batch in batches for i in batch])
