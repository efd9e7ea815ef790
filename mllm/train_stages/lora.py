"""LoRA and QLoRA stages through peft: adapters on the LLM, a 4-bit base through bitsandbytes, merged saves.

A `lora` stage wraps the stage's LLM in peft adapters; a `qlora` stage first reloads that LLM in 4-bit NF4
(BitsAndBytesConfig) and readies it with peft's `prepare_model_for_kbit_training`. Either way the stage ends by
keeping the adapter (`<stage>/adapter/`: adapter_model.safetensors + adapter_config.json) and putting merged
weights back into the model, so the stage's model folder is a plain causal LM. A QLoRA merge goes into the
full-precision base the 4-bit weights were quantized from, as the QLoRA recipe does: merging into 4-bit
weights would quantize the merged result a second time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from mllm.train_stages.stages import LoraSettings

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


def load_llm_4bit(folder: Path, compute_dtype: torch.dtype, vocab_size: int) -> PreTrainedModel:
    """The LLM in `folder` with its linear layers in 4-bit NF4 (double quantization), ready for k-bit training."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"QLoRA loads its base LLM from a folder; no config.json in {folder}")
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute_dtype)
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    llm = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, device_map={"": device},
                                               dtype=compute_dtype)
    # New token rows cannot be added to a quantized model reproducibly; the stage before adds them.
    if llm.get_input_embeddings().num_embeddings < vocab_size:
        raise ValueError(f"QLoRA base {folder} has {llm.get_input_embeddings().num_embeddings} token embeddings "
                         f"for a tokenizer of {vocab_size}; start QLoRA from a model folder of an earlier stage")
    # Checkpointing is switched on by the engine for every mode alike, so peft is not asked to.
    return prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)


def add_adapters(llm: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """`llm` frozen, with trainable LoRA adapters on `settings.target_modules`."""
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type="CAUSAL_LM")
    adapted = get_peft_model(llm, config)
    trainable, total = adapted.get_nb_trainable_parameters()
    log.info("LoRA r=%d on %s: %d of %d LLM parameters train", settings.r, settings.target_modules, trainable, total)
    return adapted


def save_adapter(llm: PeftModel, stage_dir: Path) -> Path:
    """Write the adapter alone (the embeddings are not adapted, so none are saved with it)."""
    out = stage_dir / ADAPTER_DIR
    llm.save_pretrained(out, save_embedding_layers=False)
    return out


def merged_llm(llm: PeftModel, adapter_dir: Path, quantized_from: Path | None) -> PreTrainedModel:
    """A plain causal LM with the adapter folded in: into `llm`'s own weights, or for QLoRA into the
    full-precision base in `quantized_from`."""
    if quantized_from is None:
        return llm.merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(quantized_from, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
