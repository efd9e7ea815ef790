"""OpenVision (v1) pretraining, CLIPS-style: a dual contrastive loss plus a query-based caption loss.

Per image the batch carries three texts: the web alt-text (`web_ids`) and one random sentence of the
synthetic caption (`sentence_ids`), both fixed-length rows for the text encoder, and the whole synthetic
caption (`caption_ids`, `[bos] w1..wn [eos] pad...`) as the caption target. The loss is
1 x contrastive + 2 x caption, as in the release:

- contrastive: the mean of the symmetric InfoNCE losses of the pooled image embedding against the web
  caption's and against the sentence's embedding, with one learnable temperature;
- caption: a decoder reads [projected image patch tokens; projected web-caption tokens; learnable query
  tokens]. The prefix (image and web text) attends within itself, queries attend the prefix and earlier
  queries, and query i predicts caption token i+1. Ground-truth caption tokens are never fed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor, nn

from mllm.encoders.caption_decoder import DECODER_VARIANTS
from mllm.encoders.objectives import (
    OBJECTIVES,
    ObjectiveConfig,
    PretrainObjective,
    caption_cross_entropy,
)
from mllm.encoders.text_encoder import TextEncoder
from mllm.encoders.vit import ResidualBlock, VisionTransformer, ViTConfig


@dataclass
class OpenVision1Config(ObjectiveConfig):
    text: str = "Pico"  # text-encoder variant, from the caption-decoder table (the paper's L/14 uses L)
    text_len: int = 80  # ids per web-caption / sentence row, pooling token included (80 as released)
    embed_dim: int | None = None  # contrastive embedding width; None: the text width (L: 768, as released)
    contrastive_loss_weight: float = 1.0
    init_temperature: float = 0.07  # the logit scale starts at 1 / init_temperature
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        if self.text not in DECODER_VARIANTS:
            raise ValueError(f"unknown text encoder variant {self.text!r}; available: {', '.join(DECODER_VARIANTS)}")
        if self.text_len < 3:
            raise ValueError(f"text_len must hold bos, eos and the pooling token, got {self.text_len}")
        if not 0.0 < self.init_temperature <= 1.0:
            raise ValueError(f"init_temperature must be in (0, 1], got {self.init_temperature}")


def gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """Every rank's rows, differentiably, and where this rank's rows start among them. Outside a process
    group (or in a group of one) the local rows alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return torch.cat(dist_nn.all_gather(x)), dist.get_rank() * x.shape[0]


def dual_contrastive_loss(image: Tensor, web: Tensor, sentence: Tensor, logit_scale: Tensor) -> Tensor:
    """Mean of the image->text and text->image InfoNCE losses against both captions.

    image, web, sentence: (B, D) unnormalised embeddings, row i of each belonging to image i. Under
    torch.distributed the negatives are every rank's rows, as CLIP trains: each rank scores its own rows
    against the gathered batch, so the mean over ranks equals the loss of the whole global batch.
    """
    image = F.normalize(image.float(), dim=-1)
    all_images, offset = gather_rows(image)
    labels = torch.arange(image.shape[0], device=image.device) + offset
    losses = []
    for text in (web, sentence):
        text = F.normalize(text.float(), dim=-1)
        all_texts, _ = gather_rows(text)
        losses += [F.cross_entropy(logit_scale * image @ all_texts.T, labels),
                   F.cross_entropy(logit_scale * text @ all_images.T, labels)]
    return torch.stack(losses).mean()


class QueryCaptionDecoder(nn.Module):
    """Predicts a caption from learnable queries placed after an image + web-caption prefix."""

    def __init__(
        self, variant: str, vocab_size: int, num_queries: int, vision_width: int, text_width: int,
        ln_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if variant not in DECODER_VARIANTS:
            raise ValueError(f"unknown caption decoder variant {variant!r}; available: {', '.join(DECODER_VARIANTS)}")
        width, depth, mlp_dim, heads = DECODER_VARIANTS[variant]
        self.visual_proj = nn.Linear(vision_width, width, bias=False)
        self.text_proj = nn.Linear(text_width, width, bias=False)
        self.query_tokens = nn.Parameter(torch.empty(num_queries, width))
        self.blocks = nn.ModuleList(
            ResidualBlock(width, heads, mlp_dim, ln_eps, gelu_approximate="tanh") for _ in range(depth)
        )
        self.ln_final = nn.LayerNorm(width, eps=ln_eps)
        self.head = nn.Linear(width, vocab_size, bias=False)
        nn.init.normal_(self.visual_proj.weight, std=vision_width**-0.5)
        nn.init.normal_(self.text_proj.weight, std=text_width**-0.5)
        nn.init.normal_(self.query_tokens, std=0.02)
        nn.init.normal_(self.head.weight, std=width**-0.5)

    @staticmethod
    def attention_mask(n_prefix: int, n_queries: int, device: torch.device) -> Tensor:
        """Boolean (S, S), True where a query may attend a key: the prefix sees only itself; queries see the
        prefix and themselves causally."""
        size = n_prefix + n_queries
        mask = torch.ones(size, size, dtype=torch.bool, device=device).tril()
        mask[:n_prefix, :n_prefix] = True
        return mask

    def forward(self, visual_tokens: Tensor, text_tokens: Tensor, n_queries: int) -> Tensor:
        """visual_tokens (B, N, vision_width), text_tokens (B, L, text_width) -> logits (B, n_queries, vocab).

        Queries are causal among themselves, so running only the first n_queries gives those positions
        exactly the outputs they have in a run of all of them.
        """
        if n_queries > self.query_tokens.shape[0]:
            raise ValueError(f"{n_queries} caption positions exceed the {self.query_tokens.shape[0]} queries")
        prefix = torch.cat([self.visual_proj(visual_tokens), self.text_proj(text_tokens)], dim=1)
        queries = self.query_tokens[:n_queries].to(prefix.dtype).expand(prefix.shape[0], -1, -1)
        x = torch.cat([prefix, queries], dim=1)
        mask = self.attention_mask(prefix.shape[1], n_queries, x.device)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_final(x[:, prefix.shape[1] :]))


@OBJECTIVES.register("ov1")
class OpenVision1Objective(PretrainObjective):
    """OpenVision: image-text contrastive learning on two captions plus caption prediction.

    Batch: `pixel_values` (B, 3, H, W); `web_ids` and `sentence_ids` (B, text_len), each
    `[bos] w1..wn [eos] pad... [pool]`; `caption_ids` (B, L <= max_text_len). Contrastive negatives are the
    other images of the batch.
    """

    config_class = OpenVision1Config

    def __init__(self, config: OpenVision1Config, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        self.config = config
        self.pad_id = pad_id
        embed_dim = DECODER_VARIANTS[config.text][0] if config.embed_dim is None else config.embed_dim
        self.vision = VisionTransformer(ViTConfig.from_name(config.vit, config.image_size), out_dim=embed_dim)
        self.text = TextEncoder(config.text, vocab_size, config.text_len, embed_dim)
        # Captions are [bos] + up to max_text_len - 1 targets; one query per target.
        self.decoder = QueryCaptionDecoder(
            config.decoder, vocab_size, config.max_text_len - 1, self.vision.config.width, self.text.width
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    @property
    def encoder(self) -> VisionTransformer:
        return self.vision

    def text_length(self) -> int:
        return self.config.text_len

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        caption_ids = batch["caption_ids"]
        vision = self.vision(batch["pixel_values"])
        # Both captions go through the text tower in one pass, as the release concatenates them.
        texts = self.text(torch.cat([batch["web_ids"], batch["sentence_ids"]]))
        web, sentence = texts.pooled.chunk(2)
        scale = self.logit_scale.exp().clamp(max=self.config.max_logit_scale)
        contrastive_loss = dual_contrastive_loss(vision.pooled, web, sentence, scale)

        targets = caption_ids[:, 1:]
        web_tokens = texts.tokens[: caption_ids.shape[0]]
        logits = self.decoder(vision.tokens, web_tokens, targets.shape[1])
        caption_loss = caption_cross_entropy(logits, targets, self.pad_id)
        loss = self.config.contrastive_loss_weight * contrastive_loss + self.config.caption_loss_weight * caption_loss
        return {
            "loss": loss,
            "contrastive_loss": contrastive_loss.detach(),
            "caption_loss": caption_loss.detach(),
            "logit_scale": scale.detach(),
        }
