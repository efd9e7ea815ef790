"""The whole chain at toy size through `mllm demo`: every link runs, losses fall, results have their shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mllm.cli import main
from mllm.eval.metrics import BENCHMARKS


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    config = out / "demo.yaml"
    config.write_text("""
world: {scale: tiny, shard_size: 100, describe_prob: 0.0}  # first and last batches alike: QA only
pretrain:
  model: {vit: Pico/16, image_size: 64, decoder: Pico, max_text_len: 96}
  data:
    augment: {crop_min_area: 1.0, jitter_strength: 0.0, grayscale_prob: 0.0}
  batch_size: 16
  samples: 640
  optim: {base_lr: 0.016, warmup_samples: 64}
  log_every: 5
language:
  llm: {hidden_size: 64, num_layers: 2, num_heads: 2, num_kv_heads: 2, intermediate_size: 128}
  batch_size: 16
  epochs: 1
  lr: 3.0e-3
  lr_schedule: constant
  logging_steps: 5
  sketch: {steps: 30, existence_curriculum: [10]}
train:
  logging_steps: 5
  stages:
    - {name: align, data: stage_data/align.json, image_folder: images, format: plain, train: [connector],
       lr: 2.0e-3, batch_size: 8, max_steps: 10}
    - {name: instruct, data: stage_data/instruct.json, image_folder: images, format: chat,
       train: [connector, llm], lr: 2.0e-3, batch_size: 8, max_steps: 30}
eval: {batch_size: 8, limit: 6}
""")
    main(["demo", "--config", str(config), "--out", str(out / "run")])
    return out / "run"


def test_encoder_pretraining_loss_falls(demo_run: Path) -> None:
    summary = json.loads((demo_run / "pretrain" / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["skipped_samples"] == 0
    assert summary["final_loss"] < 0.5 * summary["first_loss"]
    assert (demo_run / "pretrain" / "encoder" / "model.safetensors").is_file()


def test_language_warm_up_on_sketches_loss_falls_and_writes_a_plain_hf_folder(demo_run: Path) -> None:
    summary = json.loads((demo_run / "lm" / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["final_loss"] < 0.7 * summary["first_loss"]
    assert summary["held_out"]["existence_questions"] > 0
    files = {p.name for p in (demo_run / "lm" / "model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files


@pytest.mark.parametrize("variant", ["ov2", "random_encoder"])
def test_both_recipes_train_two_stages_with_falling_loss(demo_run: Path, variant: str) -> None:
    summary = json.loads((demo_run / variant / "summary.json").read_text())
    align, instruct = summary["stages"]
    assert (align["stage"], align["trained"]) == ("align", ["connector"])
    assert (instruct["stage"], instruct["trained"]) == ("instruct", ["connector", "llm"])
    assert instruct["final_loss"] < instruct["first_loss"]
    assert summary["model"].endswith("instruct/model")
    # The saved config is the user's recipe: the control variant's encoder switch is not written into it.
    resolved = yaml.safe_load((demo_run / "config.yaml").read_text())
    assert [stage["name"] for stage in resolved["train"]["stages"]] == ["align", "instruct"]
    assert resolved["train"]["encoder"]["random_init"] is False


def test_results_hold_both_variants_with_every_benchmark(demo_run: Path) -> None:
    results = json.loads((demo_run / "results.json").read_text())
    assert set(results) == {"ov2", "random_encoder"}
    for variant in results.values():
        assert set(variant) == {*BENCHMARKS, "mean"}
        headlines = [variant[name]["headline"] for name in BENCHMARKS]
        assert variant["mean"] == pytest.approx(sum(headlines) / len(headlines))
        assert all(0.0 <= variant[name]["chance"] <= 100.0 for name in BENCHMARKS)
    table = (demo_run / "results.md").read_text()
    assert "| **mean** |" in table and "random encoder" in table
    timings = json.loads((demo_run / "timings.json").read_text())
    parts = [timings[k] for k in ("world", "pretrain", "pretrain_lm", "vlms")]
    rounding = 0.05 * (len(parts) + 1)  # every figure is rounded to 0.1 s
    assert sum(parts) - rounding <= timings["total"] <= sum(parts) + 60
    assert set(timings["vlm_parts"]) == {f"{part}_{v}" for part in ("train", "eval") for v in ("ov2", "random_encoder")}
