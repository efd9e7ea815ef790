"""CapPa pretraining (Tschannen et al., 2023): captioning with a cross-attention decoder and parallel prediction.

The decoder reads every visual token through cross-attention. For a fraction of each training batch
(`parallel_fraction`, CapPa's default 0.75) the text inputs are all replaced by one learned [MASK]
embedding and the self-attention is not causal, so those captions are predicted in parallel from the image
alone; the other rows are teacher-forced autoregressive captioning. Text positions are learned: in parallel
rows they are the only thing telling the positions apart. The loss is the caption loss times
`caption_loss_weight`, which all objectives share (default 2, so their losses read on one scale); CapPa's own
weight is 1, and under AdamW a constant loss scale changes nothing but the effect of its epsilon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mllm.encoders.caption_decoder import DECODER_VARIANTS
from mllm.encoders.objectives import (
    OBJECTIVES,
    ObjectiveConfig,
    PretrainObjective,
    caption_cross_entropy,
)
from mllm.encoders.vit import Attention, Mlp, VisionTransformer, ViTConfig


@dataclass
class CapPaConfig(ObjectiveConfig):
    parallel_fraction: float = 0.75  # share of each training batch predicted in parallel

    def __post_init__(self) -> None:
        if not 0.0 <= self.parallel_fraction <= 1.0:
            raise ValueError(f"parallel_fraction must be in [0, 1], got {self.parallel_fraction}")


class CrossAttention(nn.Module):
    """Multi-head attention from text queries to visual keys and values of another width."""

    def __init__(self, width: int, kv_width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(kv_width, width)
        self.v_proj = nn.Linear(kv_width, width)
        self.out_proj = nn.Linear(width, width)
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _split(self, x: Tensor) -> Tensor:
        batch, seq, width = x.shape
        return x.view(batch, seq, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        """x (B, T, width) attends memory (B, N, kv_width) -> (B, T, width)."""
        out = F.scaled_dot_product_attention(
            self._split(self.q_proj(x)), self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class CrossAttentionBlock(nn.Module):
    """Pre-LN decoder block: self-attention, cross-attention to the visual tokens, MLP."""

    def __init__(self, width: int, vision_width: int, heads: int, mlp_dim: int, ln_eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.cross_attn = CrossAttention(width, vision_width, heads)
        self.ln_3 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = Mlp(width, mlp_dim, gelu_approximate="tanh")

    def forward(self, x: Tensor, memory: Tensor, attn_mask: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        x = x + self.cross_attn(self.ln_2(x), memory)
        return x + self.mlp(self.ln_3(x))


class CapPaDecoder(nn.Module):
    def __init__(
        self, variant: str, vocab_size: int, max_text_len: int, vision_width: int, ln_eps: float = 1e-6
    ) -> None:
        super().__init__()
        if variant not in DECODER_VARIANTS:
            raise ValueError(f"unknown caption decoder variant {variant!r}; available: {', '.join(DECODER_VARIANTS)}")
        width, depth, mlp_dim, heads = DECODER_VARIANTS[variant]
        # The OpenVision ViT hands over its patch tokens without a final norm; CapPa's decoder reads normed
        # encoder outputs.
        self.ln_visual = nn.LayerNorm(vision_width, eps=ln_eps)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.mask_embedding = nn.Parameter(torch.empty(width))
        self.text_pos = nn.Parameter(torch.empty(max_text_len, width))
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(width, vision_width, heads, mlp_dim, ln_eps) for _ in range(depth)
        )
        self.ln_final = nn.LayerNorm(width, eps=ln_eps)
        self.head = nn.Linear(width, vocab_size, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.mask_embedding, std=0.02)
        nn.init.normal_(self.text_pos, std=0.02)
        nn.init.normal_(self.head.weight, std=width**-0.5)

    def forward(self, visual_tokens: Tensor, input_ids: Tensor, parallel: Tensor) -> Tensor:
        """visual_tokens (B, N, vision_width), input_ids (B, T), parallel (B,) bool -> logits (B, T, vocab).

        Rows with `parallel` set ignore their input ids (all [MASK]) and attend every text position; the
        others are causal.
        """
        n_text = input_ids.shape[1]
        if n_text > self.text_pos.shape[0]:
            raise ValueError(f"text length {n_text} exceeds max_text_len {self.text_pos.shape[0]}")
        rows = parallel[:, None, None]
        x = torch.where(rows, self.mask_embedding, self.token_embedding(input_ids)) + self.text_pos[:n_text]
        causal = torch.ones(n_text, n_text, dtype=torch.bool, device=x.device).tril()
        mask = (causal | rows)[:, None]  # (B, 1, T, T), broadcast over heads
        memory = self.ln_visual(visual_tokens)
        for block in self.blocks:
            x = block(x, memory, mask)
        return self.head(self.ln_final(x))


@OBJECTIVES.register("cappa")
class CapPaObjective(PretrainObjective):
    """CapPa: caption loss through a cross-attention decoder over all visual tokens, a share of each training
    batch predicted in parallel.

    Batch: `pixel_values` (B, 3, H, W) and `caption_ids` (B, L) laid out `[bos] w1..wn [eos] pad...`.
    """

    config_class = CapPaConfig

    def __init__(self, config: CapPaConfig, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        self.config = config
        self.pad_id = pad_id
        self.vision = VisionTransformer(ViTConfig.from_name(config.vit, config.image_size))
        # The pooled output is unused, so ln_post gets no gradient; frozen for the same reason as in ov2.
        self.vision.ln_post.requires_grad_(False)
        self.decoder = CapPaDecoder(config.decoder, vocab_size, config.max_text_len, self.vision.config.width)

    @property
    def encoder(self) -> VisionTransformer:
        return self.vision

    def parallel_rows(self, batch_size: int, device: torch.device) -> Tensor:
        """(B,) bool: round(parallel_fraction * B) rows drawn at random, the expected count of a per-sample
        coin flip without its batch-to-batch spread."""
        chosen = torch.rand(batch_size, device=device).argsort()[: round(self.config.parallel_fraction * batch_size)]
        return torch.zeros(batch_size, dtype=torch.bool, device=device).index_fill(0, chosen, True)

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        caption_ids = batch["caption_ids"]
        tokens = self.vision(batch["pixel_values"]).tokens
        batch_size = caption_ids.shape[0]
        if self.training:
            parallel = self.parallel_rows(batch_size, caption_ids.device)
        else:
            parallel = torch.zeros(batch_size, dtype=torch.bool, device=caption_ids.device)
        logits = self.decoder(tokens, caption_ids[:, :-1], parallel)
        caption_loss = caption_cross_entropy(logits, caption_ids[:, 1:], self.pad_id)
        return {
            "loss": caption_loss * self.config.caption_loss_weight,
            "caption_loss": caption_loss.detach(),
            "parallel_share": parallel.float().mean(),
        }
