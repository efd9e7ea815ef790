"""The OpenVision 2 caption decoder: kept visual tokens and caption tokens in one pre-LN transformer.

The sequence is [visual_proj(visual tokens); token embeddings]. Only text positions produce logits. Visual
tokens carry no positions (they arrive as a random subset in random order); text positions are optional.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mllm.encoders.vit import ResidualBlock

# width, depth, mlp_dim, heads as in OpenVision 2's text_decoder_v2 (L is the paper default); OpenVision's
# text encoder uses the same shapes. Pico and Nano are toolkit additions for CPU-scale runs. So400m (the
# SoViT-400M block shape) is not in the release's table: it is inferred from the paper's cost table, whose
# SoViT-400M/14 rows are matched only by decoder and text towers of that shape (OpenVision's So400m embedding
# width, 1152, agrees); see `mllm flops`.
DECODER_VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (512, 12, 2048, 8),
    "L": (768, 12, 3072, 12),
    "So400m": (1152, 27, 4304, 16),
    "H": (1024, 24, 4096, 16),
    "G": (1664, 48, 8192, 16),
    "Pico": (128, 2, 512, 4),
    "Nano": (192, 3, 768, 4),
}

MASK_KINDS = ("causal", "prefix")

# Masks are tiny but rebuilding one per step is wasted work; bound the cache because greedy decoding
# visits one text length per step.
_MASK_CACHE_LIMIT = 256


@dataclass
class CaptionDecoderConfig:
    variant: str = "L"
    vocab_size: int = 32000
    max_text_len: int = 128
    # "causal": the whole [visual; text] sequence is causal (what the released JAX code runs).
    # "prefix": visual tokens see each other, text is causal and sees every visual token.
    mask: str = "causal"
    text_positions: bool = False  # learned text position embedding (off in the release)
    ln_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.variant not in DECODER_VARIANTS:
            raise ValueError(
                f"unknown caption decoder variant {self.variant!r}; available: {', '.join(DECODER_VARIANTS)}"
            )
        if self.mask not in MASK_KINDS:
            raise ValueError(f"unknown decoder mask {self.mask!r}; choose one of {', '.join(MASK_KINDS)}")
        if self.vocab_size <= 0 or self.max_text_len <= 0:
            raise ValueError("vocab_size and max_text_len must be positive")

    @property
    def width(self) -> int:
        return DECODER_VARIANTS[self.variant][0]

    @property
    def depth(self) -> int:
        return DECODER_VARIANTS[self.variant][1]

    @property
    def mlp_dim(self) -> int:
        return DECODER_VARIANTS[self.variant][2]

    @property
    def heads(self) -> int:
        return DECODER_VARIANTS[self.variant][3]


class CaptionDecoder(nn.Module):
    def __init__(self, config: CaptionDecoderConfig, vision_width: int) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.visual_proj = nn.Linear(vision_width, width, bias=False)
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.text_pos = (
            nn.Parameter(torch.empty(config.max_text_len, width)) if config.text_positions else None
        )
        self.blocks = nn.ModuleList(
            ResidualBlock(width, config.heads, config.mlp_dim, config.ln_eps, gelu_approximate="tanh")
            for _ in range(config.depth)
        )
        self.ln_final = nn.LayerNorm(width, eps=config.ln_eps)
        self.head = nn.Linear(width, config.vocab_size, bias=False)
        self._masks: dict[tuple[int, int, torch.device], Tensor] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.visual_proj.weight, std=self.visual_proj.in_features**-0.5)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        if self.text_pos is not None:
            nn.init.normal_(self.text_pos, std=0.02)
        nn.init.normal_(self.head.weight, std=self.config.width**-0.5)

    def attention_mask(self, n_visual: int, n_text: int, device: torch.device) -> Tensor:
        """Boolean (S, S) mask, True where a query may attend a key, S = n_visual + n_text."""
        key = (n_visual, n_text, torch.device(device))
        mask = self._masks.get(key)
        if mask is None:
            size = n_visual + n_text
            mask = torch.ones(size, size, dtype=torch.bool, device=device).tril()
            if self.config.mask == "prefix":
                mask[:n_visual, :n_visual] = True
            if len(self._masks) >= _MASK_CACHE_LIMIT:
                self._masks.clear()
            self._masks[key] = mask
        return mask

    def hidden_states(
        self, visual_tokens: Tensor, input_ids: Tensor, text_padding_mask: Tensor | None = None
    ) -> Tensor:
        """Last-block output over the whole sequence, (B, K + T, width), before ln_final.

        text_padding_mask: (B, T) boolean, True at padding; no position may attend a padded key.
        """
        n_visual, n_text = visual_tokens.shape[1], input_ids.shape[1]
        if n_text > self.config.max_text_len:
            raise ValueError(f"text length {n_text} exceeds max_text_len {self.config.max_text_len}")
        text = self.token_embedding(input_ids)
        if self.text_pos is not None:
            text = text + self.text_pos[:n_text].to(text.dtype)
        x = torch.cat([self.visual_proj(visual_tokens).to(text.dtype), text], dim=1)

        mask = self.attention_mask(n_visual, n_text, x.device)
        if text_padding_mask is not None:
            visual_keys = text_padding_mask.new_ones(text_padding_mask.shape[0], n_visual)
            keys = torch.cat([visual_keys, ~text_padding_mask.bool()], dim=1)
            # Every query keeps the visual keys, so no row of the combined mask is empty.
            mask = mask[None, None] & keys[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return x

    def forward(
        self, visual_tokens: Tensor, input_ids: Tensor, text_padding_mask: Tensor | None = None
    ) -> Tensor:
        """visual_tokens (B, K, vision_width), input_ids (B, T) -> logits (B, T, vocab) at text positions."""
        x = self.hidden_states(visual_tokens, input_ids, text_padding_mask)
        return self.head(self.ln_final(x[:, visual_tokens.shape[1] :]))
