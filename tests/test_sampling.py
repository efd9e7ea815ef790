"""Batch samplers: every index once per epoch, single-modality batches, graceful single-modality data."""

from __future__ import annotations

import random

import pytest

from mllm.data.sampling import GroupedByLength, GroupedByModality


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


@pytest.mark.parametrize("image_share", [0.0, 0.3, 1.0])
def test_modality_batches_are_pure_and_cover_every_sample_once(image_share: float) -> None:
    rng = random.Random(0)
    n, size = 203, 8
    has_image = [rng.random() < image_share for _ in range(n)]
    lengths = [rng.randint(5, 300) for _ in range(n)]
    order = list(iter(GroupedByModality(lengths, has_image, size, seed=1)))
    assert sorted(order) == list(range(n))
    batches = _batches(order, size)
    n_image, n_text = sum(has_image), n - sum(has_image)
    full = n_image // size + n_text // size
    assert all(len({has_image[i] for i in batch}) == 1 for batch in batches[:full])
    assert sum(len(b) for b in batches[full:]) == n_image % size + n_text % size


def test_modality_sampler_reshuffles_each_epoch_and_groups_lengths() -> None:
    lengths = list(range(400))
    has_image = [i % 3 != 0 for i in range(400)]
    sampler = GroupedByModality(lengths, has_image, batch_size=10, group=4, seed=0)
    first, second = list(iter(sampler)), list(iter(sampler))
    assert first != second and sorted(first) == sorted(second)
    spans = [max(b) - min(b) for b in _batches(first, 10)[:-1]]
    assert sum(spans) / len(spans) < 100  # length-sorted within chunks of 40; a random batch spans ~300


def test_modality_flags_must_match_the_samples() -> None:
    with pytest.raises(ValueError, match="3 modality flags for 4 samples"):
        GroupedByModality([1, 2, 3, 4], [True, False, True], 2)


def test_length_sampler_is_deterministic_for_a_seed() -> None:
    lengths = [random.Random(i).randint(1, 50) for i in range(64)]
    assert list(iter(GroupedByLength(lengths, 8, seed=3))) == list(iter(GroupedByLength(lengths, 8, seed=3)))
    assert list(iter(GroupedByLength(lengths, 8, seed=3))) != list(iter(GroupedByLength(lengths, 8, seed=4)))
