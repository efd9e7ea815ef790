"""`benchmarks/tower_drift.py` and `benchmarks/shuffled_update.py`: a tower's distance from its
initialisation, and the control that keeps an update's size but not its direction."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mllm.data.images import AugmentConfig
from mllm.data.shards import ShardConfig
from mllm.encoders.objective_options import ModelOptions
from mllm.encoders.tower import EncoderConfig, OpenVisionTower
from mllm.train_stages.pretrain import pretrain
from mllm.train_stages.pretrain_config import OptimConfig, PretrainConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("tower_drift"), importlib.import_module("shuffled_update")


def run(world: Path, out: Path, encoder_lr_scale: float) -> Path:
    """Eight steps of a Pico/16 OV2 pretraining at 32 px, the tower at `encoder_lr_scale` of the LR."""
    pretrain(PretrainConfig(
        out=str(out), tokenizer=str(world / "tokenizer"),
        data=ShardConfig(shards=str(world / "shards"),
                         augment=AugmentConfig(crop_min_area=1.0, jitter_strength=0.0, grayscale_prob=0.0)),
        model=ModelOptions(vit="Pico/16", image_size=32, decoder="Pico", max_text_len=96), batch_size=4,
        samples=32, optim=OptimConfig(base_lr=0.016, warmup_samples=8, encoder_lr_scale=encoder_lr_scale),
        log_every=1))
    (out / "config.yaml").write_text(f"out: {out}\ntokenizer: {world / 'tokenizer'}\nmodel:\n  vit: Pico/16\n"
                                     "  image_size: 32\n  decoder: Pico\n  max_text_len: 96\n")
    return out


def test_drift_is_zero_for_a_frozen_tower_and_the_update_shuffles_into_the_same_values(
        tmp_path: Path, tiny_world: Path, scripts: tuple[ModuleType, ModuleType],
        monkeypatch: pytest.MonkeyPatch) -> None:
    tower_drift, shuffled_update = scripts
    frozen = tower_drift.drift(run(tiny_world, tmp_path / "frozen", 0.0))
    trained = tower_drift.drift(run(tiny_world, tmp_path / "trained", 1.0))
    assert frozen["tower"] == 0.0 and frozen["rest"] > 0
    assert trained["tower"] > 0
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        tower_drift.drift(tmp_path / "trained" / "encoder")

    monkeypatch.setattr(sys, "argv", ["shuffled_update.py", "--encoder", str(tmp_path / "trained" / "encoder"),
                                      "--out", str(tmp_path / "shuffled")])
    shuffled_update.main()
    towers = {name: OpenVisionTower.from_config(EncoderConfig(path=str(tmp_path / folder), random_init=random))
              for name, folder, random in [("start", "trained/encoder", True), ("trained", "trained/encoder", False),
                                           ("shuffled", "shuffled", False)]}
    params = {name: dict(tower.vit.named_parameters()) for name, tower in towers.items()}
    changed = 0
    for key, start in params["start"].items():
        update, shuffled = params["trained"][key] - start, params["shuffled"][key] - start
        torch.testing.assert_close(shuffled.flatten().sort().values, update.flatten().sort().values)
        changed += not torch.equal(shuffled, update)
    assert changed > len(params["start"]) // 2
