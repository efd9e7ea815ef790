"""`mllm pretrain` at scale, in miniature: two processes over gloo (DDP, then FSDP2 resuming its checkpoint),
exact resume after an interruption, atomic checkpoints, progressive resolution, and the per-block options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import mllm.train_stages.checkpoint as checkpoint_module
import mllm.train_stages.pretrain as pretrain_module
from mllm.data.images import AugmentConfig
from mllm.data.shards import ShardConfig
from mllm.encoders.objective_options import ModelOptions
from mllm.train_stages.pretrain import pretrain
from mllm.train_stages.pretrain_config import OptimConfig, PhaseConfig, PretrainConfig

REPO = Path(__file__).resolve().parents[1]
POSITIONS = "vision.positional_embedding"  # the fixed sin-cos table: its shape follows the image size


def tiny(world: Path, out: Path, **overrides: Any) -> PretrainConfig:
    """Pico ViT and decoder at 32 px, 8 steps of 4 by default; augmentation off, so the loss falls fast."""
    base = PretrainConfig(
        out=str(out), tokenizer=str(world / "tokenizer"),
        data=ShardConfig(shards=str(world / "shards"),
                         augment=AugmentConfig(crop_min_area=1.0, jitter_strength=0.0, grayscale_prob=0.0)),
        model=ModelOptions(vit="Pico/16", image_size=32, decoder="Pico", max_text_len=96),
        batch_size=4, samples=32, optim=OptimConfig(base_lr=0.016, warmup_samples=8), log_every=1,
    )
    return replace(base, **overrides)


def tiny_args(world: Path, out: Path) -> list[str]:
    """The same run as `tiny` on the command line, with the global batch of 8 split over two processes."""
    return ["--out", str(out), "--tokenizer", str(world / "tokenizer"), "--data.shards", str(world / "shards"),
            "--data.augment.crop_min_area", "1.0", "--data.augment.jitter_strength", "0",
            "--data.augment.grayscale_prob", "0", "--model.vit", "Pico/16", "--model.image_size", "32",
            "--model.decoder", "Pico", "--model.max_text_len", "96", "--batch_size", "4", "--samples", "64",
            "--optim.base_lr", "0.016", "--optim.warmup_samples", "16", "--log_every", "1",
            "--checkpoint_every", "4"]


def torchrun(*args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mllm.cli", "pretrain", *args]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class Preempted(Exception):
    pass


# ------------------------------------------------------------------------------------- two processes


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, tiny_world: Path) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    torchrun(*tiny_args(tiny_world, out), "--strategy", "ddp")
    return out


def test_two_gloo_processes_train_with_ddp_and_write_an_encoder(ddp_run: Path) -> None:
    summary = json.loads((ddp_run / "summary.json").read_text())
    assert (summary["strategy"], summary["world_size"], summary["steps"], summary["samples"]) == ("ddp", 2, 8, 64)
    assert summary["final_loss"] < 0.8 * summary["first_loss"]
    assert (ddp_run / "encoder" / "model.safetensors").is_file()
    root = ddp_run / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-00000008"
    assert {p.name for p in (root / "step-00000004").iterdir()} >= {"model_optim", "trainer.json", "rng-0.pt",
                                                                    "rng-1.pt"}


def test_fsdp_resumes_the_ddp_checkpoint_and_continues_its_loss_curve(tmp_path: Path, tiny_world: Path,
                                                                      ddp_run: Path) -> None:
    out = tmp_path / "fsdp"
    torchrun(*tiny_args(tiny_world, out), "--strategy", "fsdp",
             "--resume", str(ddp_run / "checkpoints" / "step-00000004"))
    ddp_losses = [r["loss"] for r in metrics(ddp_run) if r["step"] > 4]
    assert [r["step"] for r in metrics(out)] == [5, 6, 7, 8]
    assert [r["loss"] for r in metrics(out)] == pytest.approx(ddp_losses, rel=1e-5)
    sharded = {p.name for p in (out / "checkpoints" / "step-00000008" / "model_optim").iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp"} <= sharded  # each rank wrote its own shards
    ddp_weights, fsdp_weights = (load_file(run / "encoder" / "model.safetensors") for run in (ddp_run, out))
    for name, value in ddp_weights.items():
        torch.testing.assert_close(fsdp_weights[name], value, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- resume and checkpoints


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_world: Path) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    pretrain(tiny(tiny_world, out, checkpoint_every=2))
    return out


def test_a_run_resumed_after_an_interruption_repeats_the_loss_curve_exactly(
    tmp_path: Path, tiny_world: Path, uninterrupted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save = pretrain_module.save_checkpoint

    def preempted_after_step_4(*args: Any, **kwargs: Any) -> Path:
        path = save(*args, **kwargs)
        if path.name == "step-00000004":
            raise Preempted
        return path

    cfg = tiny(tiny_world, tmp_path / "run", checkpoint_every=2, keep_checkpoints=4)
    monkeypatch.setattr(pretrain_module, "save_checkpoint", preempted_after_step_4)
    with pytest.raises(Preempted):
        pretrain(cfg)
    monkeypatch.undo()
    assert not (tmp_path / "run" / "encoder").exists()
    summary = pretrain(replace(cfg, resume="latest"))
    assert summary["resumed_from"].endswith("step-00000004") and summary["steps"] == 8
    assert metrics(tmp_path / "run") == metrics(uninterrupted)  # every step's loss and LR, bit for bit
    resumed, full = (load_file(run / "objective.safetensors") for run in (tmp_path / "run", uninterrupted))
    assert all(torch.equal(resumed[name], value) for name, value in full.items())

    # Resuming an older checkpoint of the same folder rewinds it: the later checkpoints go, the curve repeats.
    root = tmp_path / "run" / "checkpoints"
    pretrain(replace(cfg, resume=str(root / "step-00000004")))
    assert metrics(tmp_path / "run") == metrics(uninterrupted)
    assert sorted(p.name for p in root.iterdir()) == ["latest"] + [f"step-0000000{s}" for s in (2, 4, 6, 8)]

    # Without the replay the run continues at once on a fresh stream: same schedule, other samples.
    fresh = replace(cfg, out=str(tmp_path / "fresh"), resume=str(root / "step-00000004"), replay_on_resume=False)
    pretrain(fresh)
    records = metrics(tmp_path / "fresh")
    assert [r["step"] for r in records] == [5, 6, 7, 8]
    assert [r["lr"] for r in records] == [r["lr"] for r in metrics(uninterrupted)[4:]]
    assert records[0]["loss"] != metrics(uninterrupted)[4]["loss"]


def test_a_crash_while_writing_a_checkpoint_leaves_latest_loadable(
    tmp_path: Path, tiny_world: Path, uninterrupted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save, calls = checkpoint_module.dcp.save, []

    def crash_on_second_save(state: dict[str, Any], **kwargs: Any) -> Any:
        calls.append(kwargs["checkpoint_id"])
        result = save(state, **kwargs)
        if len(calls) == 2:  # the shards are on disk, the rest of the checkpoint never comes
            raise OSError("simulated crash")
        return result

    cfg = tiny(tiny_world, tmp_path / "run", checkpoint_every=2, keep_checkpoints=2)
    monkeypatch.setattr(checkpoint_module.dcp, "save", crash_on_second_save)
    with pytest.raises(OSError, match="simulated crash"):
        pretrain(cfg)
    monkeypatch.undo()
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-00000002"
    assert (root / ".tmp-step-00000004").is_dir() and not (root / "step-00000004").exists()

    pretrain(replace(cfg, resume="latest"))
    assert metrics(tmp_path / "run") == metrics(uninterrupted)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000006", "step-00000008"]


# ---------------------------------------------------------------------------- progressive resolution


def test_two_phases_change_resolution_and_hand_over_every_weight(
    tmp_path: Path, tiny_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[tuple[int, dict[str, torch.Tensor]]] = []
    wrap = pretrain_module.wrap

    def record_start(objective: Any, *args: Any) -> Any:
        starts.append((objective.encoder.config.image_size,
                       {k: v.clone() for k, v in objective.state_dict().items()}))
        return wrap(objective, *args)

    monkeypatch.setattr(pretrain_module, "wrap", record_start)
    out = tmp_path / "run"
    pretrain(tiny(tiny_world, out, phases=[PhaseConfig(image_size=32, samples=32),
                                           PhaseConfig(image_size=48, samples=8, base_lr=0.004, batch_size=2)]))
    (size_1, phase_1), (size_2, phase_2) = starts
    handed = load_file(out / "phase1" / "objective.safetensors")
    assert (size_1, size_2) == (32, 48) and handed.keys() == phase_2.keys()
    assert all(torch.equal(phase_2[k], v) for k, v in handed.items() if k != POSITIONS)  # decoder included
    assert (handed[POSITIONS].shape[0], phase_2[POSITIONS].shape[0]) == (1 + 2 * 2, 1 + 3 * 3)
    assert not torch.equal(phase_1["vision.conv1.weight"], phase_2["vision.conv1.weight"])
    assert [(r["phase"], r["step"]) for r in metrics(out)] == [(1, s) for s in range(1, 9)] + [(2, 9), (2, 10),
                                                                                                (2, 11), (2, 12)]
    sizes = [json.loads((folder / "encoder" / "config.json").read_text())["vit"]["image_size"]
             for folder in (out / "phase1", out)]
    assert sizes == [32, 48]

    # The same hand-over as a second command, and from an exported encoder (the ViT only).
    starts.clear()
    pretrain(tiny(tiny_world, tmp_path / "chained", init=str(out / "phase1"), samples=4,
                  model=ModelOptions(vit="Pico/16", image_size=48, decoder="Pico", max_text_len=96)))
    pretrain(tiny(tiny_world, tmp_path / "from_encoder", init=str(out / "phase1" / "encoder"), samples=4))
    (_, chained), (_, from_encoder) = starts
    assert all(torch.equal(chained[k], v) for k, v in handed.items() if k != POSITIONS)
    assert torch.equal(from_encoder["vision.conv1.weight"], handed["vision.conv1.weight"])
    assert not torch.equal(from_encoder["decoder.head.weight"], handed["decoder.head.weight"])


# ---------------------------------------------------------------------------------- per-block options


def test_grad_checkpointing_keeps_the_losses_and_bf16_autocast_trains(tmp_path: Path, tiny_world: Path) -> None:
    pretrain(tiny(tiny_world, tmp_path / "plain", samples=12))
    pretrain(tiny(tiny_world, tmp_path / "recomputed", samples=12, grad_checkpointing=True))
    assert metrics(tmp_path / "recomputed") == metrics(tmp_path / "plain")
    bf16 = pretrain(tiny(tiny_world, tmp_path / "bf16", samples=12, precision="bf16"))
    assert bf16["first_loss"] == pytest.approx(metrics(tmp_path / "plain")[0]["loss"], rel=0.05)


def test_distributed_strategies_refuse_to_run_without_torchrun(tmp_path: Path, tiny_world: Path) -> None:
    with pytest.raises(ValueError, match="torchrun"):
        pretrain(tiny(tiny_world, tmp_path / "run", strategy="fsdp"))
    with pytest.raises(ValueError, match="precision"):
        pretrain(tiny(tiny_world, tmp_path / "run", precision="fp16"))
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        pretrain(tiny(tiny_world, tmp_path / "run", optim=OptimConfig(encoder_lr_scale=-0.1)))
