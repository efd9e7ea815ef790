"""Encoder pretraining objectives: the contract the trainer relies on, and OpenVision 2 captioning.

An objective owns the modules it trains and turns a batch into a weighted loss; the trainer owns the loop,
optimizer and schedule. Only `encoder` is exported after pretraining. OpenVision (`ov1`) and CapPa (`cappa`)
live in their own modules and register themselves here when imported.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mllm.encoders.caption_decoder import CaptionDecoder, CaptionDecoderConfig
from mllm.encoders.vit import VisionTransformer, ViTConfig
from mllm.registry import Registry

logger = logging.getLogger(__name__)

# Parameters that are embeddings by role even though some are 2-D matrices.
_EMBEDDING_NAMES = {"class_embedding", "positional_embedding", "text_pos", "query_tokens"}


@dataclass
class ObjectiveConfig:
    """Options every objective shares: the ViT, the image size, the caption decoder and the caption loss."""

    vit: str = "Pico/16"
    image_size: int = 112
    decoder: str = "Pico"
    max_text_len: int = 128
    caption_loss_weight: float = 2.0


class PretrainObjective(nn.Module, ABC):
    """A trainable pretraining objective around a vision encoder.

    Subclasses are built as `cls(config, vocab_size=..., pad_id=...)` with an instance of `config_class`.
    """

    config_class: ClassVar[type[ObjectiveConfig]]

    @abstractmethod
    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Return at least "loss" (scalar, already weighted) plus any scalar tensors worth logging."""

    @property
    @abstractmethod
    def encoder(self) -> VisionTransformer:
        """The vision encoder that is exported when pretraining ends."""

    def text_length(self) -> int | None:
        """Length of the fixed-size `web_ids` and `sentence_ids` rows the objective reads from a batch, or
        None when its batches carry only `pixel_values` and `caption_ids`."""
        return None

    def no_weight_decay_names(self) -> set[str]:
        """Parameter names excluded from weight decay: biases, norms and embeddings.

        Decay applies to weight matrices only, as OpenVision's `.*/kernel$` mask does.
        """
        names: set[str] = set()
        for module_name, module in self.named_modules():
            excluded_module = isinstance(module, (nn.LayerNorm, nn.Embedding))
            for param_name, param in module.named_parameters(recurse=False):
                if excluded_module or param.ndim < 2 or param_name in _EMBEDDING_NAMES:
                    names.add(f"{module_name}.{param_name}" if module_name else param_name)
        return names


OBJECTIVES: Registry[type[PretrainObjective]] = Registry("pretraining objective")


@dataclass
class OpenVision2Config(ObjectiveConfig):
    keep_ratio: float = 0.35
    mask: str = "causal"
    text_positions: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")


def caption_cross_entropy(logits: Tensor, targets: Tensor, pad_id: int) -> Tensor:
    """Mean next-token cross-entropy over the non-pad targets: logits (B, T, V), targets (B, T)."""
    total = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=pad_id, reduction="sum")
    return total / (targets != pad_id).sum().clamp_min(1)


def keep_random_tokens(tokens: Tensor, keep_ratio: float) -> Tensor:
    """Per image, a uniform random subset of int(N * keep_ratio) tokens (at least one), in random order."""
    batch, n, width = tokens.shape
    n_keep = max(1, int(n * keep_ratio))
    order = torch.rand(batch, n, device=tokens.device).argsort(dim=1)[:, :n_keep]
    return torch.gather(tokens, 1, order.unsqueeze(-1).expand(batch, n_keep, width))


@OBJECTIVES.register("ov2")
class OpenVision2Objective(PretrainObjective):
    """OpenVision 2: caption-only pretraining from a random subset of the ViT's patch tokens.

    Batch: `pixel_values` (B, 3, H, W) and `caption_ids` (B, L) laid out `[bos] w1..wn [eos] pad...`.
    """

    config_class = OpenVision2Config

    def __init__(self, config: OpenVision2Config, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        self.config = config
        self.pad_id = pad_id
        self.vision = VisionTransformer(ViTConfig.from_name(config.vit, config.image_size))
        # The pooled output is unused here, so ln_post would get no gradient (as in the JAX release); freezing
        # it keeps DDP from tripping over unused parameters and changes nothing else.
        self.vision.ln_post.requires_grad_(False)
        decoder_config = CaptionDecoderConfig(
            variant=config.decoder,
            vocab_size=vocab_size,
            max_text_len=config.max_text_len,
            mask=config.mask,
            text_positions=config.text_positions,
        )
        self.decoder = CaptionDecoder(decoder_config, vision_width=self.vision.config.width)

    @property
    def encoder(self) -> VisionTransformer:
        return self.vision

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        caption_ids = batch["caption_ids"]
        tokens = self.vision(batch["pixel_values"]).tokens
        if self.training:
            tokens = keep_random_tokens(tokens, self.config.keep_ratio)
        targets = caption_ids[:, 1:]
        # Pads only trail the caption and text attention is causal, so no padding mask is needed for the
        # positions that count.
        logits = self.decoder(tokens, caption_ids[:, :-1])
        caption_loss = caption_cross_entropy(logits, targets, self.pad_id)
        return {
            "loss": caption_loss * self.config.caption_loss_weight,
            "caption_loss": caption_loss.detach(),
            "kept_tokens": torch.tensor(float(tokens.shape[1]), device=caption_loss.device),
        }

    @torch.no_grad()
    def generate_caption(self, pixel_values: Tensor, bos_id: int, eos_id: int, max_len: int) -> Tensor:
        """Greedy captions from all visual tokens: (B, <= max_len) ids starting with bos, pad after eos."""
        if max_len < 2:
            raise ValueError(f"max_len must leave room for bos and one token, got {max_len}")
        tokens = self.vision(pixel_values).tokens
        ids = torch.full((tokens.shape[0], 1), bos_id, dtype=torch.long, device=tokens.device)
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for _ in range(min(max_len, self.config.max_text_len + 1) - 1):
            next_ids = self.decoder(tokens, ids)[:, -1].argmax(dim=-1)
            next_ids = next_ids.masked_fill(finished, self.pad_id)
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            finished |= next_ids == eos_id
            if bool(finished.all()):
                break
        return ids
