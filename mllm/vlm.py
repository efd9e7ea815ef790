"""The VLM: vision tower -> connector -> causal LM, LLaVA style.

Prompts carry one `<image>` placeholder token per image position; the embeddings at those positions are
replaced by the connector's output, so the LLM sees [text, image features, text] in one sequence and
truncation can be checked against real positions. A saved model is a folder:

    mllm_config.json           tower spec, connector, image preprocessing, placeholder token
    vision.safetensors         tower weights
    connector.safetensors      connector weights
    llm/                       the causal LM (transformers `save_pretrained`, safetensors)
    tokenizer files            with the chat template used in training
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mllm.connectors import Connector, build_connector
from mllm.encoders.tower import VisionTower, build_tower_from_spec
from mllm.llm import IMAGE_TOKEN

CONFIG_FILE = "mllm_config.json"


class VisionLanguageModel(nn.Module):
    def __init__(self, tower: VisionTower, connector: Connector, connector_name: str, llm: PreTrainedModel,
                 image_token_id: int) -> None:
        super().__init__()
        self.tower, self.connector, self.llm = tower, connector, llm
        self.connector_name = connector_name
        self.image_token_id = image_token_id

    @classmethod
    def assemble(cls, tower: VisionTower, connector_name: str, llm: PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase) -> VisionLanguageModel:
        width = llm.get_input_embeddings().embedding_dim
        connector = build_connector(connector_name, tower.width, width)
        return cls(tower, connector, connector_name, llm, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))

    @property
    def num_image_tokens(self) -> int:
        return self.connector.num_tokens(self.tower.num_patches)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image features written over the placeholder positions."""
        is_image = input_ids == self.image_token_id
        embeds = self.llm.get_input_embeddings()(input_ids)
        n_slots = int(is_image.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_slots:
                raise ValueError(f"{n_slots} image placeholder tokens but no images")
            return embeds
        # A frozen tower needs no activations kept for backward.
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.tower.parameters())):
            vision = self.tower(pixel_values.to(embeds.dtype))
        features = self.connector(vision)
        if n_slots != features.shape[0] * features.shape[1]:
            raise ValueError(f"{n_slots} image placeholder tokens for {features.shape[0]} images of "
                             f"{features.shape[1]} tokens each")
        return embeds.masked_scatter(is_image.unsqueeze(-1), features.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> Any:
        embeds = self.embed(input_ids, pixel_values)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
                 max_new_tokens: int, eos_token_ids: list[int], pad_token_id: int) -> torch.Tensor:
        """Greedy continuation ids (B, <= max_new_tokens) of left-padded prompts."""
        embeds = self.embed(input_ids, pixel_values)
        return self.llm.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=eos_token_ids, pad_token_id=pad_token_id, temperature=None, top_p=None, top_k=None,
        )

    def save_pretrained(self, out_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
        """Write the model folder atomically: a crash leaves the previous folder intact."""
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = {"tower": self.tower.spec(), "connector": self.connector_name, "image_token": IMAGE_TOKEN,
                  "num_image_tokens": self.num_image_tokens}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        save_file({k: v.contiguous() for k, v in self.tower.state_dict().items()}, str(tmp / "vision.safetensors"))
        save_file({k: v.contiguous() for k, v in self.connector.state_dict().items()},
                  str(tmp / "connector.safetensors"))
        self.llm.save_pretrained(tmp / "llm")
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)

    @classmethod
    def from_pretrained(cls, folder: Path) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
        folder = Path(folder)
        config_file = folder / CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"not an mllm model folder (no {CONFIG_FILE}): {folder}")
        config = json.loads(config_file.read_text())
        tower = build_tower_from_spec(config["tower"])
        tower.load_state_dict(load_file(str(folder / "vision.safetensors")))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        llm = AutoModelForCausalLM.from_pretrained(folder / "llm")
        model = cls.assemble(tower, config["connector"], llm, tokenizer)
        model.connector.load_state_dict(load_file(str(folder / "connector.safetensors")))
        return model, tokenizer
