"""Shared fixtures: one tiny synthetic world per test session, and tiny untrained VLM folders built on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mllm.data.images import ImageConfig
from mllm.encoders.tower import EncoderConfig, build_tower, save_encoder
from mllm.encoders.vit import VisionTransformer, ViTConfig
from mllm.llm import LLMConfig, build_llm, load_tokenizer
from mllm.vlm import VisionLanguageModel
from mllm.world.build import WorldConfig, build_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a `tiny` world (seed 0, 100 samples a shard), built once per session."""
    out = tmp_path_factory.mktemp("world")
    build_world(WorldConfig(out=str(out), seed=0, scale="tiny", shard_size=100))
    return out


def save_pico_encoder(out: Path, image_size: int = 32) -> Path:
    """An exported Pico/16 encoder (seeded) at `out`, as `mllm pretrain` writes one."""
    torch.manual_seed(0)
    save_encoder(VisionTransformer(ViTConfig("Pico", patch_size=16, image_size=image_size)),
                 ImageConfig(size=image_size), out)
    return out


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported Pico/16 encoder at 32 px (2x2 patches), built once per session."""
    return save_pico_encoder(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="session")
def make_tiny_vlm(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`make_tiny_vlm(name, image_size=32, varied_text=False)`: the model folder of an untrained VLM (a Pico
    ViT at `image_size`, a one-layer Llama with the world's tokenizer). With `varied_text` the LM is untied
    and widely initialised, so its replies are varied text (a tied one repeats its last token). The weights
    come from a fixed seed, so a model (and the text it writes) does not depend on which tests ran before."""

    def make(name: str, image_size: int = 32, varied_text: bool = False) -> Path:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return build(name, image_size, varied_text)

    def build(name: str, image_size: int, varied_text: bool) -> Path:
        root = tmp_path_factory.mktemp(name)
        save_pico_encoder(root / "encoder", image_size)
        cfg = LLMConfig(tokenizer=str(tiny_world / "tokenizer"), hidden_size=64, num_layers=1, num_heads=2,
                        num_kv_heads=2, intermediate_size=128)
        tokenizer = load_tokenizer(cfg)
        if varied_text:
            llm = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, initializer_range=0.2))
        else:
            llm = build_llm(cfg, tokenizer)
        model = VisionLanguageModel.assemble(build_tower(EncoderConfig(path=str(root / "encoder"))), "mlp2x_gelu",
                                             llm, tokenizer)
        model.save_pretrained(root / "model", tokenizer)
        return root / "model"

    return make
