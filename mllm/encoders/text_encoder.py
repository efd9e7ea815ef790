"""OpenVision's contrastive text tower: a bidirectional pre-LN transformer pooled at its last position.

As released (`text_transformer.Model`, pool 'last', no causal mask): token embedding plus a learned position
table, pre-LN blocks with tanh GELU, no padding mask, a final LayerNorm, and the embedding read at the last
position, where the tokenizer puts its pooling token after the padding (`[bos] w1..wn [eos] pad... [cls]`),
then a bias-free projection. Widths follow the caption-decoder table (OpenVision's text L is 768/12/3072/12).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mllm.encoders.caption_decoder import DECODER_VARIANTS
from mllm.encoders.vit import ResidualBlock


@dataclass
class TextOutput:
    tokens: Tensor  # (B, L, width): every position after the final LayerNorm
    pooled: Tensor  # (B, out_dim): the last position, projected


class TextEncoder(nn.Module):
    def __init__(self, variant: str, vocab_size: int, length: int, out_dim: int, ln_eps: float = 1e-6) -> None:
        super().__init__()
        if variant not in DECODER_VARIANTS:
            raise ValueError(f"unknown text encoder variant {variant!r}; available: {', '.join(DECODER_VARIANTS)}")
        width, depth, mlp_dim, heads = DECODER_VARIANTS[variant]
        self.width, self.length = width, length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(length, width))
        self.blocks = nn.ModuleList(
            ResidualBlock(width, heads, mlp_dim, ln_eps, gelu_approximate="tanh") for _ in range(depth)
        )
        self.ln_final = nn.LayerNorm(width, eps=ln_eps)
        self.text_projection = nn.Linear(width, out_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection.weight, std=width**-0.5)

    def forward(self, input_ids: Tensor) -> TextOutput:
        """input_ids (B, length) with the pooling token last -> tokens and pooled embedding."""
        if input_ids.shape[1] != self.length:
            # The pooled position is fixed by the layout, so a different length would pool a different token.
            raise ValueError(f"text encoder expects rows of {self.length} ids, got {input_ids.shape[1]}")
        x = self.token_embedding(input_ids) + self.positional_embedding
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        return TextOutput(tokens=x, pooled=self.text_projection(x[:, -1]))
