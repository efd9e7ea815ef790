"""Batch samplers: length-grouped, and modality-grouped (image and text-only samples in separate batches).

Sorting within large chunks and then keeping the sorted order (as transformers' LengthGroupedSampler
does) feeds the model long runs of one kind of sample; over a short run that interference costs more
than padding. Here the batches are shuffled after grouping.

Both samplers yield a flat index stream whose consecutive runs of `batch_size` indices are the intended
batches; `batch_size` should be the global batch (per-device batch x gradient accumulation x processes), so
that when the engine deals consecutive per-device batches to processes each still holds one modality.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch.utils.data import Sampler


def length_batches(indices: list[int], lengths: list[int], batch_size: int, group: int,
                   rng: random.Random) -> list[list[int]]:
    """`indices` shuffled, cut into chunks of `group` batches, sorted by length within each chunk, batched."""
    order = list(indices)
    rng.shuffle(order)
    chunk = batch_size * group
    batches = []
    for start in range(0, len(order), chunk):
        ranked = sorted(order[start : start + chunk], key=lengths.__getitem__)
        batches += [ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size)]
    return batches


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
        batches = length_batches(list(range(len(self.lengths))), self.lengths, self.batch_size, self.group, rng)
        rng.shuffle(batches)
        self.epoch += 1
        return iter([i for batch in batches for i in batch])


class GroupedByModality(GroupedByLength):
    """LLaVA's `group_by_modality_length`: every full batch holds image samples only or text-only samples
    only (each length-grouped); the two modalities' incomplete batches merge into one last batch. With a
    single modality this is plain length grouping."""

    def __init__(self, lengths: list[int], has_image: list[bool], batch_size: int, group: int = 8,
                 seed: int = 0) -> None:
        if len(has_image) != len(lengths):
            raise ValueError(f"{len(has_image)} modality flags for {len(lengths)} samples")
        super().__init__(lengths, batch_size, group, seed)
        self.has_image = has_image

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed + self.epoch)
        full, leftover = [], []
        for modality in (True, False):
            indices = [i for i, flag in enumerate(self.has_image) if flag is modality]
            for batch in length_batches(indices, self.lengths, self.batch_size, self.group, rng):
                (full if len(batch) == self.batch_size else leftover).append(batch)
        rng.shuffle(full)
        self.epoch += 1
        return iter([i for batch in [*full, sorted(i for b in leftover for i in b)] for i in batch])
