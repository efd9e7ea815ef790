"""Shared fixtures: one tiny synthetic world per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mllm.world.build import WorldConfig, build_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a `tiny` world (seed 0, 100 samples a shard), built once per session."""
    out = tmp_path_factory.mktemp("world")
    build_world(WorldConfig(out=str(out), seed=0, scale="tiny", shard_size=100))
    return out
