"""Training engines of `mllm train`: attention choice, activation checkpointing, LoRA and QLoRA stages with
merged saves, DeepSpeed / FSDP options, throughput logging, and a 2-process CPU run under torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, TrainingArguments

from mllm.encoders.tower import EncoderConfig
from mllm.llm import LLMConfig, resolve_attn_implementation
from mllm.train_stages import lora
from mllm.train_stages.stages import LoraSettings, StageConfig, TrainConfig
from mllm.train_stages.vlm_trainer import (
    CHECKPOINT_WEIGHTS,
    assemble,
    deepspeed_config,
    engine_options,
    prepare_llm,
    set_trainable,
    train,
)
from mllm.vlm import VisionLanguageModel

REPO = Path(__file__).resolve().parent.parent



def recipe(world: Path, encoder: Path, out: Path, stages: list[StageConfig], **options: Any) -> TrainConfig:
    """A tiny two-layer LLM over a 4-token image encoder; `options` set TrainConfig fields."""
    llm = LLMConfig(tokenizer=str(world / "tokenizer"), hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2,
                    intermediate_size=128)
    defaults: dict[str, Any] = {"logging_steps": 1, "progress": False, "report_to": []}
    return TrainConfig(out=str(out), encoder=EncoderConfig(path=str(encoder)), llm=llm, stages=stages,
                       **{**defaults, **options})


def stage(world: Path, name: str, train_modules: list[str], steps: int, **more: Any) -> StageConfig:
    plain = name == "align"
    return StageConfig(name=name, data=str(world / "stage_data" / f"{name}.json"), image_folder=str(world / "images"),
                       format="plain" if plain else "chat", train=train_modules, lr=more.pop("lr", 3e-3),
                       batch_size=4, max_steps=steps, warmup_ratio=0.0, **more)


def lora_settings() -> LoraSettings:
    return LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])


@pytest.fixture(scope="module")
def lora_run(tiny_world: Path, encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """align (connector), then instruct with the LLM as LoRA, checkpointing its last step, with TensorBoard."""
    out = tmp_path_factory.mktemp("lora_run")
    stages = [stage(tiny_world, "align", ["connector"], 2),
              stage(tiny_world, "instruct", ["connector", "llm"], 8, llm_mode="lora", lora=lora_settings())]
    train(recipe(tiny_world, encoder_dir, out, stages, checkpoint_every=8, report_to=["tensorboard"]))
    return out


def logits(model: torch.nn.Module, world: Path) -> torch.Tensor:
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (2, 12))
    ids[:, 2:6] = model.image_token_id
    with torch.no_grad():
        return model.eval()(ids, torch.ones_like(ids), torch.randn(2, 3, 32, 32)).logits


def test_auto_attention_takes_flash_attention_only_with_cuda_and_flash_attn(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_attn_implementation("eager") == "eager"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_attn_implementation("auto") == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "flash_attn" else None)
    assert resolve_attn_implementation("auto") == "flash_attention_2"
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert resolve_attn_implementation("auto") == "sdpa"


def test_bad_engine_and_lora_options_are_refused(tiny_world: Path) -> None:
    with pytest.raises(ValueError, match="'llm' must be in train"):
        StageConfig(train=["connector"], llm_mode="lora")
    with pytest.raises(ValueError, match="unknown llm_mode 'dora'"):
        StageConfig(train=["llm"], llm_mode="dora")
    with pytest.raises(ValueError, match="choose one of deepspeed and fsdp"):
        TrainConfig(deepspeed=str(REPO / "configs/deepspeed/zero2.json"), fsdp="full_shard auto_wrap")
    with pytest.raises(FileNotFoundError, match="DeepSpeed config not found"):
        TrainConfig(deepspeed="missing.json")


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_activation_checkpointing_keeps_the_gradients_with_frozen_embeddings(
        tiny_world: Path, encoder_dir: Path, tmp_path: Path, mode: str) -> None:
    grads = []
    for checkpointing in (False, True):
        cfg = recipe(tiny_world, encoder_dir, tmp_path, [], gradient_checkpointing=checkpointing)
        step = StageConfig(train=["llm"], llm_mode=mode, lora=lora_settings())
        torch.manual_seed(0)
        model, tokenizer = assemble(cfg)
        set_trainable(model, ["llm"])
        model.llm.get_input_embeddings().requires_grad_(False)  # frozen embeddings, frozen connector
        prepare_llm(cfg, step, model, None, len(tokenizer))
        assert model.llm.is_activation_checkpointing == checkpointing
        model.train()
        ids = torch.randint(5, 200, (2, 10))
        model(ids, torch.ones_like(ids), labels=ids).loss.backward()
        named = {n: p.grad for n, p in model.llm.named_parameters() if p.requires_grad}
        assert named and all(g is not None for g in named.values())
        grads.append(named)
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_lora_stage_trains_adapters_and_connector_only_and_loss_falls(lora_run: Path) -> None:
    summary = json.loads((lora_run / "summary.json").read_text())
    instruct = summary["stages"][1]
    assert instruct["llm_mode"] == "lora" and instruct["steps"] == 8
    assert instruct["final_loss"] < instruct["first_loss"]
    saved = load_file(str(lora_run / "instruct" / "checkpoints" / "checkpoint-8" / CHECKPOINT_WEIGHTS))
    assert all(k.startswith("connector.") or ".lora_" in k for k in saved), sorted(saved)
    assert any(".lora_" in k for k in saved) and any(k.startswith("connector.") for k in saved)
    # Only the adapted projections have adapters; everything else of the LLM stayed frozen.
    assert {k.split(".")[-4] for k in saved if ".lora_" in k} == {"q_proj", "v_proj", "down_proj"}


def test_lora_stage_saves_the_adapter_and_a_merged_plain_model_with_the_adapted_logits(
        lora_run: Path, tiny_world: Path) -> None:
    from peft import PeftModel

    adapter = lora_run / "instruct" / lora.ADAPTER_DIR
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in adapter.iterdir()}
    merged, _ = VisionLanguageModel.from_pretrained(lora_run / "instruct" / "model")
    assert type(merged.llm) is LlamaForCausalLM
    assert not any("lora" in name for name in merged.state_dict())
    # The adapted model: the stage's starting point, its trained connector, the adapter on top.
    adapted, _ = VisionLanguageModel.from_pretrained(lora_run / "align" / "model")
    adapted.connector.load_state_dict(merged.connector.state_dict())
    adapted.llm = PeftModel.from_pretrained(adapted.llm, adapter)
    base, _ = VisionLanguageModel.from_pretrained(lora_run / "align" / "model")
    base.connector.load_state_dict(merged.connector.state_dict())
    assert torch.allclose(logits(merged, tiny_world), logits(adapted, tiny_world), atol=1e-5)
    assert not torch.allclose(logits(merged, tiny_world), logits(base, tiny_world), atol=1e-3)


def test_logs_and_summary_carry_throughput_and_peak_memory(lora_run: Path) -> None:
    instruct = json.loads((lora_run / "summary.json").read_text())["stages"][1]
    assert instruct["tokens_per_second"] > 0 and instruct["samples_per_second"] > 0
    assert instruct["peak_memory_mb"] > 10
    state = json.loads((lora_run / "instruct" / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    steps = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(steps) == 8
    assert all(e["tokens_per_second"] > 0 and e["samples_per_second"] > 0 and e["peak_memory_mb"] > 10 for e in steps)
    # Four samples a step, every token of which is a non-pad token of this stage's data.
    assert state["num_input_tokens_seen"] > 8 * 4 * 4
    assert list((lora_run / "instruct" / "checkpoints" / "runs").rglob("events.out.tfevents.*"))


def bnb_4bit_runs_on_cpu() -> bool:
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 64, quant_type="nf4").to("cpu")
        layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4").to("cpu")
        return bool(torch.isfinite(layer(torch.randn(2, 64))).all())
    except Exception:  # noqa: BLE001 - any failure means no usable CPU kernels here
        return False


def test_qlora_stage_trains_on_a_4bit_base_and_merges_into_its_full_precision_weights(
        lora_run: Path, tiny_world: Path, encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not bnb_4bit_runs_on_cpu():
        pytest.skip("bitsandbytes has no working 4-bit CPU kernels on this machine")
    import bitsandbytes as bnb
    from peft import PeftModel

    loaded = []
    load_4bit = lora.load_llm_4bit
    monkeypatch.setattr(lora, "load_llm_4bit", lambda *args: loaded.append(load_4bit(*args)) or loaded[-1])

    init = lora_run / "align" / "model"
    stages = [stage(tiny_world, "instruct", ["connector", "llm"], 6, init=str(init), llm_mode="qlora",
                    lora=lora_settings())]
    summary = train(recipe(tiny_world, encoder_dir, tmp_path, stages, checkpoint_every=6))
    instruct = summary["stages"][0]
    assert instruct["final_loss"] < instruct["first_loss"]
    assert len(loaded) == 1 and any(isinstance(m, bnb.nn.Linear4bit) for m in loaded[0].modules())
    saved = load_file(str(tmp_path / "instruct" / "checkpoints" / "checkpoint-6" / CHECKPOINT_WEIGHTS))
    assert all(k.startswith("connector.") or ".lora_" in k for k in saved)
    merged, _ = VisionLanguageModel.from_pretrained(tmp_path / "instruct" / "model")
    assert type(merged.llm) is LlamaForCausalLM
    assert getattr(merged.llm.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in merged.llm.parameters())
    expected, _ = VisionLanguageModel.from_pretrained(init)
    expected.connector.load_state_dict(merged.connector.state_dict())
    expected.llm = PeftModel.from_pretrained(expected.llm, tmp_path / "instruct" / lora.ADAPTER_DIR)
    assert torch.allclose(logits(merged, tiny_world), logits(expected, tiny_world), atol=1e-5)


def test_fsdp_auto_wrap_is_told_the_llm_decoder_layers(tiny_world: Path, encoder_dir: Path, tmp_path: Path) -> None:
    cfg = recipe(tiny_world, encoder_dir, tmp_path, [], fsdp="full_shard auto_wrap")
    model, _ = assemble(cfg)
    options = engine_options(cfg, model)
    assert options == {"fsdp": "full_shard auto_wrap",
                       "fsdp_config": {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}
    assert engine_options(recipe(tiny_world, encoder_dir, tmp_path, []), model) == {}


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_deepspeed_configs_fill_hidden_size_values_and_are_accepted(name: str, tmp_path: Path) -> None:
    config = deepspeed_config(REPO / "configs" / "deepspeed" / f"{name}.json", hidden_size=64)
    zero = config["zero_optimization"]
    assert zero["stage"] == int(name[-1]) and zero["reduce_bucket_size"] == 64 * 64
    assert config["train_micro_batch_size_per_gpu"] == "auto"  # left to the HF integration
    if name == "zero3":
        assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
        assert zero["stage3_param_persistence_threshold"] == 640
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # noqa: BLE001 - an install without its extensions fails in many ways
        pytest.skip(f"deepspeed does not import here: {err}")
    args = TrainingArguments(output_dir=str(tmp_path), deepspeed=config, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, use_cpu=True)
    ds = args.hf_deepspeed_config.config
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == args.max_grad_norm


# Records which samples each process loads; set on the launched processes only (PYTHONPATH).
RECORDER = """
import os
if os.environ.get("RECORD_SAMPLES_TO"):
    from mllm.data import llava_json

    original = llava_json.ConversationDataset.__getitem__

    def recording(self, index):
        with open(os.path.join(os.environ["RECORD_SAMPLES_TO"], f"rank{os.environ['RANK']}.txt"), "a") as f:
            f.write(self.samples[index % len(self.samples)].id + "\\n")
        return original(self, index)

    llava_json.ConversationDataset.__getitem__ = recording
"""


def test_two_cpu_processes_under_torchrun_share_the_data_and_rank_zero_writes(
        tiny_world: Path, encoder_dir: Path, tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(RECORDER))
    records = tmp_path / "records"
    records.mkdir()
    config = tmp_path / "recipe.yaml"
    config.write_text(textwrap.dedent(f"""
        out: {tmp_path / "run"}
        encoder: {{path: {encoder_dir}}}
        llm: {{tokenizer: {tiny_world / "tokenizer"}, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 2,
               intermediate_size: 64}}
        logging_steps: 1
        progress: false
        report_to: []
        stages:
          - {{name: align, data: {tiny_world / "stage_data/align.json"}, image_folder: {tiny_world / "images"},
             format: plain, train: [connector], batch_size: 2, max_steps: 3}}
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECORD_SAMPLES_TO": str(records),
           "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}
    torchrun = Path(sys.executable).parent / "torchrun"
    with socket.socket() as probe:  # a free port, so parallel runs on this machine do not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m", "mllm.cli",
                           "train", "--config", str(config)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"][0]["steps"] == 3
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")] == []
    assert (tmp_path / "run" / "align" / "model" / "connector.safetensors").is_file()
    seen = [(records / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert len(seen[0]) >= 6 and len(seen[1]) >= 6  # 3 steps of 2 samples each, or more with prefetching
    assert not set(seen[0][:6]) & set(seen[1][:6])
