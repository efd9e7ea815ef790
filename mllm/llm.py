"""The language model of a VLM: any local `AutoModelForCausalLM` directory, or a fresh Llama from a config.

The tokenizer gets what VLM training needs and some checkpoints lack: a pad token, and an `<image>`
placeholder token. New rows of the embedding matrix start at the mean of the old ones.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mllm.data.templates import apply_template

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"


@dataclass
class LLMConfig:
    """Either `path` (a local HF causal-LM folder) or the size of a fresh Llama; `tokenizer` is a folder."""

    path: str | None = None
    tokenizer: str | None = None
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 704
    max_position_embeddings: int = 1024
    model_max_length: int = 512
    chat_template: str | None = None  # llama3, chatml or vicuna_v1 (mllm.data.templates); None: the tokenizer's own
    attn_implementation: str = "auto"  # "auto": flash_attention_2 when flash-attn and CUDA are there, else sdpa


def resolve_attn_implementation(name: str) -> str:
    """The attention kernel `name` asks for; "auto" takes FlashAttention-2 only where it can run."""
    if name != "auto":
        return name
    return "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa"


def load_tokenizer(cfg: LLMConfig) -> PreTrainedTokenizerBase:
    source = cfg.tokenizer or cfg.path
    if source is None:
        raise ValueError("llm.tokenizer (or llm.path) must name a tokenizer folder")
    if not Path(source).is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {source}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    added = apply_template(tokenizer, cfg.chat_template) if cfg.chat_template else []
    if tokenizer.pad_token is None:
        added.append("<pad>")
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        added.append(IMAGE_TOKEN)
        tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if added:
        log.info("added tokens %s to the tokenizer from %s", added, source)
    tokenizer.model_max_length = cfg.model_max_length
    return tokenizer


def build_llm(cfg: LLMConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Load `cfg.path` or build a fresh Llama; the embedding matrix is sized to the tokenizer."""
    if cfg.path is not None:
        if not Path(cfg.path).is_dir():
            raise FileNotFoundError(f"LLM folder not found: {cfg.path}")
        model = AutoModelForCausalLM.from_pretrained(
            cfg.path, attn_implementation=resolve_attn_implementation(cfg.attn_implementation))
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        config._attn_implementation = resolve_attn_implementation(cfg.attn_implementation)
        model = LlamaForCausalLM(config)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model
