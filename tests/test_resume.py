"""Resuming `mllm train` mid-stage: finished stages are skipped, a half-written checkpoint is never picked,
and the resumed run logs the same per-step losses as one that was never interrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mllm.encoders.tower import EncoderConfig
from mllm.llm import LLMConfig
from mllm.train_stages.callbacks import COMPLETE_MARKER
from mllm.train_stages.stages import StageConfig, TrainConfig
from mllm.train_stages.vlm_trainer import CHECKPOINT_WEIGHTS, StageTrainer, train

STEPS = 6


class SimulatedCrash(RuntimeError):
    pass



def recipe(world: Path, encoder: Path, out: Path, resume: str | None = None) -> TrainConfig:
    """align (connector, 2 steps), then instruct training the connector and the whole tied-embedding LLM
    under a warm-up and cosine schedule, with a checkpoint every 2 steps."""
    llm = LLMConfig(tokenizer=str(world / "tokenizer"), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                    intermediate_size=64)
    common = {"image_folder": str(world / "images"), "batch_size": 4, "warmup_ratio": 0.3, "lr": 3e-3}
    stages = [StageConfig(name="align", data=str(world / "stage_data/align.json"), format="plain",
                          train=["connector"], max_steps=2, **common),
              StageConfig(name="instruct", data=str(world / "stage_data/instruct.json"), format="chat",
                          train=["connector", "llm"], max_steps=STEPS, **common)]
    return TrainConfig(out=str(out), encoder=EncoderConfig(path=str(encoder)), llm=llm, stages=stages,
                       logging_steps=1, progress=False, report_to=[], checkpoint_every=2, keep_checkpoints=2,
                       resume=resume)


def step_losses(out: Path) -> list[float]:
    state = json.loads((out / "instruct" / "checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def uninterrupted(tiny_world: Path, encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    train(recipe(tiny_world, encoder_dir, out))
    return out


def test_checkpoints_hold_each_trainable_tensor_once_and_rotate(uninterrupted: Path) -> None:
    folder = uninterrupted / "instruct" / "checkpoints"
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert all((p / COMPLETE_MARKER).is_file() for p in folder.glob("checkpoint-*"))
    saved = load_file(str(folder / "checkpoint-6" / CHECKPOINT_WEIGHTS))
    # The tied LM head is the embedding matrix: saved once, under the embedding's name.
    assert "llm.model.embed_tokens.weight" in saved and "llm.lm_head.weight" not in saved
    assert not any(k.startswith("tower.") for k in saved)
    assert (uninterrupted / "instruct" / "done.json").is_file()


def test_interrupted_run_resumes_with_the_same_per_step_losses(
        uninterrupted: Path, tiny_world: Path, encoder_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    training_step = StageTrainer.training_step

    def crash_in_step_6(self: StageTrainer, *args: object, **kwargs: object) -> torch.Tensor:
        if self.stage.name == "instruct" and self.state.global_step == 5:
            raise SimulatedCrash("simulated crash")
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(StageTrainer, "training_step", crash_in_step_6)
    with pytest.raises(SimulatedCrash):
        train(recipe(tiny_world, encoder_dir, tmp_path))
    monkeypatch.setattr(StageTrainer, "training_step", training_step)
    checkpoints = tmp_path / "instruct" / "checkpoints"
    assert not (tmp_path / "instruct" / "done.json").exists()
    # What a crash while writing checkpoint-5 would leave: a folder without the completion marker.
    (checkpoints / "checkpoint-5").mkdir()
    (checkpoints / "checkpoint-5" / CHECKPOINT_WEIGHTS).write_bytes(b"torn")
    align_weights = tmp_path / "align" / "model" / "connector.safetensors"
    align_written = align_weights.stat().st_mtime_ns

    summary = train(recipe(tiny_world, encoder_dir, tmp_path, resume="latest"))

    align, instruct = summary["stages"]
    assert align_weights.stat().st_mtime_ns == align_written and align["resumed_from"] is None
    assert instruct["resumed_from"] == str(checkpoints / "checkpoint-4") and instruct["steps"] == STEPS
    assert not (checkpoints / "checkpoint-5").exists()
    expected, resumed = step_losses(uninterrupted), step_losses(tmp_path)
    assert len(expected) == len(resumed) == STEPS
    assert resumed == pytest.approx(expected, abs=1e-5)


def test_resume_names_a_checkpoint_outside_the_run(tiny_world: Path, encoder_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a checkpoint folder of any stage"):
        train(recipe(tiny_world, encoder_dir, tmp_path, resume=str(tmp_path / "elsewhere" / "checkpoint-2")))
