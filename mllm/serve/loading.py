"""Loading a saved VLM for chat and serving: safetensors only, no remote code, optionally a 4- or 8-bit LM.

A model folder may come from anywhere, so weights in pickle formats (which run code when unpickled) are
refused before anything is read, and nothing is loaded with `trust_remote_code`. With `quantization`
("4bit" or "8bit") the LM part loads through bitsandbytes; the vision tower and the connector, small next
to it, stay in full precision.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedTokenizerBase

from mllm.encoders.tower import build_tower_from_spec
from mllm.vlm import CONFIG_FILE, VisionLanguageModel

log = logging.getLogger(__name__)

QUANTIZATIONS = ("4bit", "8bit")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickled_weights(folder: Path) -> None:
    """Fail when the folder holds weights in a pickle format: only safetensors are ever loaded."""
    pickled = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ValueError(f"{folder} holds pickled weights ({', '.join(pickled[:3])}); only safetensors are loaded: "
                         f"convert or remove them")


def load_model(folder: Path, device: torch.device,
               quantization: str | None = None) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """The model and tokenizer saved in `folder`, the LM quantized to `quantization` when given."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    refuse_pickled_weights(folder)
    if quantization is None:
        return VisionLanguageModel.from_pretrained(folder)
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; expected one of {QUANTIZATIONS}")
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"quantized loading needs an mllm model folder (with {CONFIG_FILE}): {folder}")
    config = json.loads(config_file.read_text())
    tower = build_tower_from_spec(config["tower"])
    tower.load_state_dict(load_file(str(folder / "vision.safetensors")))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bits = BitsAndBytesConfig(load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit")
    llm = AutoModelForCausalLM.from_pretrained(folder / "llm", quantization_config=bits, use_safetensors=True,
                                               device_map={"": device})
    model = VisionLanguageModel.assemble(tower, config["connector"], llm, tokenizer)
    if config.get("anyres"):
        model.enable_anyres(config["anyres"]["grid_pinpoints"])
    model.connector.load_state_dict(load_file(str(folder / "connector.safetensors")))
    log.info("loaded %s with its LM in %s", folder, quantization)
    return model, tokenizer
