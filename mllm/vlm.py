"""The VLM: vision tower -> connector -> causal LM, LLaVA style.

Prompts carry one `<image>` placeholder token per image position; the embeddings at those positions are
replaced by the connector's output, so the LLM sees [text, image features, text] in one sequence and
truncation can be checked against real positions. A saved model is a folder:

    mllm_config.json           tower spec, connector, image preprocessing, placeholder token, AnyRes mode
    vision.safetensors         tower weights
    connector.safetensors      connector weights (with AnyRes's learned `image_newline`)
    llm/                       the causal LM (transformers `save_pretrained`, safetensors)
    tokenizer files            with the chat template used in training

In AnyRes mode (LLaVA-NeXT, see mllm/data/anyres.py) an image is several tiles plus the size it came in,
and its token count depends on that size. The learned row-end vector is registered on the connector as
`image_newline`, so it trains whenever the connector trains and is saved with the connector's weights.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mllm.connectors import Connector, build_connector
from mllm.data.anyres import AnyResLayout
from mllm.data.images import to_tensor
from mllm.encoders.tower import VisionTower, build_tower_from_spec
from mllm.llm import IMAGE_TOKEN, resolve_attn_implementation

CONFIG_FILE = "mllm_config.json"
NEWLINE = "image_newline"


class VisionLanguageModel(nn.Module):
    def __init__(self, tower: VisionTower, connector: Connector, connector_name: str, llm: PreTrainedModel,
                 image_token_id: int) -> None:
        super().__init__()
        self.tower, self.connector, self.llm = tower, connector, llm
        self.connector_name = connector_name
        self.image_token_id = image_token_id
        self.grid_pinpoints: list[list[int]] | None = None  # [height, width] canvases in AnyRes mode

    @classmethod
    def assemble(cls, tower: VisionTower, connector_name: str, llm: PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase) -> VisionLanguageModel:
        width = llm.get_input_embeddings().embedding_dim
        connector = build_connector(connector_name, tower.width, width)
        return cls(tower, connector, connector_name, llm, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))

    @property
    def num_image_tokens(self) -> int:
        """Positions of one fixed-size image (of one tile in AnyRes mode)."""
        return self.connector.num_tokens(self.tower.num_patches)

    @property
    def anyres(self) -> AnyResLayout | None:
        """The AnyRes layout, or None when every image is one fixed-size input."""
        if self.grid_pinpoints is None:
            return None
        return AnyResLayout.create(self.grid_pinpoints, self.tower.image.size, self._tokens_per_side())

    def _tokens_per_side(self) -> int:
        patches = self.tower.num_patches
        side, kept = math.isqrt(patches), self.connector.num_tokens(patches)
        if side * side != patches or kept != patches:
            raise ValueError(f"AnyRes needs a square grid of patch tokens (no class token) kept by the connector; "
                             f"this tower gives {patches} tokens and the connector {kept}")
        return side

    def enable_anyres(self, grid_pinpoints: list[list[int]] | None = None) -> None:
        """Switch to AnyRes with these [height, width] canvases (LLaVA-NeXT's for the tower when None).

        A new row-end vector starts as LLaVA-NeXT's, randn / sqrt(width); one already there is kept, so a
        model that is AnyRes stays so with its learned newline."""
        layout = AnyResLayout.create(grid_pinpoints, self.tower.image.size, self._tokens_per_side())
        if NEWLINE not in dict(self.connector.named_parameters(recurse=False)):
            width = self.llm.get_input_embeddings().embedding_dim
            like = next(self.connector.parameters())
            newline = torch.randn(width, dtype=like.dtype, device=like.device) / math.sqrt(width)
            self.connector.register_parameter(NEWLINE, nn.Parameter(newline, requires_grad=like.requires_grad))
        self.grid_pinpoints = [list(pinpoint) for pinpoint in layout.grid_pinpoints]

    def preprocess_images(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """Pixels for `embed`, the (height, width) sizes AnyRes needs (else None), and each image's positions."""
        layout = self.anyres
        if layout is None:
            pixels = torch.stack([to_tensor(image, self.tower.image) for image in images])
            return pixels, None, [self.num_image_tokens] * len(images)
        pixels = torch.cat([layout.tiles(image, self.tower.image) for image in images])
        sizes = torch.tensor([[image.height, image.width] for image in images])
        return pixels, sizes, [layout.num_image_tokens(image.width, image.height) for image in images]

    def _pack_anyres(self, features: torch.Tensor, image_sizes: torch.Tensor | None) -> torch.Tensor:
        """All images' packed features (sum of positions, D) from the tiles' (num_tiles, N, D)."""
        if image_sizes is None:
            raise ValueError("an AnyRes model needs image_sizes (height, width) for each image")
        layout = self.anyres
        sizes = [(int(height), int(width)) for height, width in image_sizes.tolist()]
        tiles = [layout.num_tiles(width, height) for height, width in sizes]
        if sum(tiles) != features.shape[0]:
            raise ValueError(f"{features.shape[0]} tiles given for images of sizes {sizes} that need {tiles}")
        newline = self.connector.get_parameter(NEWLINE)
        return torch.cat([layout.pack(image, width, height, newline)
                          for image, (height, width) in zip(features.split(tiles), sizes, strict=True)])

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with image features written over the placeholder positions. In AnyRes mode
        `pixel_values` holds every image's tiles back to back and `image_sizes` their (height, width)."""
        is_image = input_ids == self.image_token_id
        embeds = self.llm.get_input_embeddings()(input_ids)
        n_slots = int(is_image.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_slots:
                raise ValueError(f"{n_slots} image placeholder tokens but no images")
            return embeds + self._unused_image_side(embeds)
        # A frozen tower needs no activations kept for backward.
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.tower.parameters())):
            vision = self.tower(pixel_values.to(embeds.dtype))
        features = self.connector(vision)
        if self.grid_pinpoints is not None:
            features = self._pack_anyres(features, image_sizes)
            if n_slots != features.shape[0]:
                raise ValueError(f"{n_slots} image placeholder tokens for AnyRes images of {features.shape[0]} "
                                 f"tokens in all")
        elif n_slots != features.shape[0] * features.shape[1]:
            raise ValueError(f"{n_slots} image placeholder tokens for {features.shape[0]} images of "
                             f"{features.shape[1]} tokens each")
        return embeds.masked_scatter(is_image.unsqueeze(-1), features.to(embeds.dtype))

    def _unused_image_side(self, embeds: torch.Tensor) -> torch.Tensor | float:
        """Zero, tied to every trainable tower and connector parameter: a text-only batch then still reaches
        them in backward, as distributed data parallel requires of each rank (LLaVA does the same)."""
        if not torch.is_grad_enabled():
            return 0.0
        trainable = [p for module in (self.tower, self.connector) for p in module.parameters() if p.requires_grad]
        return sum((p.sum() * 0.0 for p in trainable), torch.zeros((), dtype=embeds.dtype, device=embeds.device))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None) -> Any:
        embeds = self.embed(input_ids, pixel_values, image_sizes)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
                 max_new_tokens: int, eos_token_ids: list[int], pad_token_id: int,
                 image_sizes: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
        """Continuation ids (B, <= max_new_tokens) of left-padded prompts: greedy unless `options` (passed to
        transformers' `generate`: do_sample, temperature, top_p, streamer, ...) say otherwise. `image_sizes`
        as for `embed` (AnyRes only)."""
        embeds = self.embed(input_ids, pixel_values, image_sizes)
        settings = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, **options}
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos_token_ids, pad_token_id=pad_token_id, **settings)

    def save_pretrained(self, out_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
        """Write the model folder atomically: a crash leaves the previous folder intact."""
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = {"tower": self.tower.spec(), "connector": self.connector_name, "image_token": IMAGE_TOKEN,
                  "num_image_tokens": self.num_image_tokens,
                  "anyres": None if self.grid_pinpoints is None else {"grid_pinpoints": self.grid_pinpoints}}
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
            from mllm.interop.hf_llava import is_hf_llava_folder, load_hf_llava

            if is_hf_llava_folder(folder):
                return load_hf_llava(folder)
            raise FileNotFoundError(f"not an mllm model folder (no {CONFIG_FILE}): {folder}")
        config = json.loads(config_file.read_text())
        tower = build_tower_from_spec(config["tower"])
        tower.load_state_dict(load_file(str(folder / "vision.safetensors")))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        llm = AutoModelForCausalLM.from_pretrained(folder / "llm", use_safetensors=True,
                                                   attn_implementation=resolve_attn_implementation("auto"))
        model = cls.assemble(tower, config["connector"], llm, tokenizer)
        if config.get("anyres"):
            model.enable_anyres(config["anyres"]["grid_pinpoints"])
        model.connector.load_state_dict(load_file(str(folder / "connector.safetensors")))
        return model, tokenizer
