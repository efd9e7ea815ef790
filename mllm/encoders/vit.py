"""The OpenVision vision transformer, laid out with open_clip's state-dict names so released weights load.

Architecture (OpenVision's big_vision ViT): bias-free conv patch embedding, a class token, a fixed 2-D sin-cos
position table (zeros for the class token), pre-norm blocks with exact GELU, no LayerNorm before the blocks,
and LayerNorm only on the mean-pooled patch tokens. Patch tokens come out of the last block without a norm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

# width, depth, mlp_dim, heads. Ti..g are the OpenVision sizes; Pico and Nano are toolkit additions (not
# paper sizes) small enough to pretrain on CPU in the synthetic world.
VIT_VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "Pico": (128, 4, 512, 4),
    "Nano": (192, 6, 768, 4),
}


@dataclass
class ViTConfig:
    variant: str = "Pico"
    patch_size: int = 16
    image_size: int = 224
    ln_eps: float = 1e-6
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VIT_VARIANTS:
            raise ValueError(f"unknown ViT variant {self.variant!r}; available: {', '.join(VIT_VARIANTS)}")
        if self.patch_size <= 0 or self.image_size < self.patch_size:
            raise ValueError(f"need 0 < patch_size <= image_size, got {self.patch_size}, {self.image_size}")

    @property
    def width(self) -> int:
        return VIT_VARIANTS[self.variant][0]

    @property
    def depth(self) -> int:
        return VIT_VARIANTS[self.variant][1]

    @property
    def mlp_dim(self) -> int:
        return VIT_VARIANTS[self.variant][2]

    @property
    def heads(self) -> int:
        return VIT_VARIANTS[self.variant][3]

    @property
    def grid_size(self) -> int:
        # Floor like the strided conv: So400m/14 at 384 px has a 27x27 grid.
        return self.image_size // self.patch_size

    @classmethod
    def from_name(cls, name: str, image_size: int) -> ViTConfig:
        """Parse an OpenVision model name such as "L/14", "So400m/14" or "Pico/16"."""
        variant, sep, patch = name.partition("/")
        if not sep or not patch.isdigit() or variant not in VIT_VARIANTS:
            raise ValueError(
                f"bad ViT name {name!r}: expected '<variant>/<patch>' with variant one of "
                f"{', '.join(VIT_VARIANTS)} (e.g. 'L/14')"
            )
        return cls(variant=variant, patch_size=int(patch), image_size=image_size)


def posemb_sincos_2d(
    grid_h: int,
    grid_w: int,
    width: int,
    temperature: float = 10_000.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Fixed 2-D sin-cos table of shape (1 + grid_h*grid_w, width); row 0 (the class token) is zeros.

    Patches are numbered row-major like a flattened conv output; each row is [sin(x), cos(x), sin(y), cos(y)]
    over width/4 frequencies 1/temperature**(k/(width/4 - 1)).
    """
    if width % 4 or width < 8:
        raise ValueError(f"sin-cos position table needs width divisible by 4 and >= 8, got {width}")
    quarter = width // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32, device=device) / (quarter - 1))
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float32, device=device),
        torch.arange(grid_w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    x = xs.reshape(-1, 1) * omega
    y = ys.reshape(-1, 1) * omega
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    return torch.cat([table.new_zeros(1, width), table], dim=0)


class Attention(nn.Module):
    """Multi-head self-attention with open_clip's packed in_proj layout: rows are [q; k; v], heads major."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # q, k and v are separate (width, width) xavier-initialised kernels in the JAX original.
        for chunk in self.in_proj_weight.detach().chunk(3, dim=0):
            nn.init.xavier_uniform_(chunk)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: (B, S, width); attn_mask: boolean, True where a query may attend a key, broadcastable to
        (B, heads, S, S)."""
        batch, seq, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, seq, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq, width))


class Mlp(nn.Module):
    def __init__(self, width: int, mlp_dim: int, gelu_approximate: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, mlp_dim)
        self.c_proj = nn.Linear(mlp_dim, width)
        self.gelu_approximate = gelu_approximate
        for layer in (self.c_fc, self.c_proj):
            nn.init.xavier_uniform_(layer.weight)
            # big_vision's MlpBlock starts biases at normal(1e-6) rather than exact zeros.
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.gelu_approximate))


class ResidualBlock(nn.Module):
    """Pre-norm transformer block (shared with the caption decoder, which uses tanh GELU)."""

    def __init__(
        self, width: int, heads: int, mlp_dim: int, ln_eps: float, gelu_approximate: str = "none"
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = Mlp(width, mlp_dim, gelu_approximate)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.grad_checkpointing = config.grad_checkpointing
        block_args = (config.width, config.heads, config.mlp_dim, config.ln_eps)
        self.resblocks = nn.ModuleList(ResidualBlock(*block_args) for _ in range(config.depth))

    def forward(self, x: Tensor, collect: list[Tensor] | None = None) -> Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if collect is not None:
                collect.append(x)
        return x


@dataclass
class VisionOutput:
    tokens: Tensor  # (B, N, width): last-block patch tokens, no LayerNorm, class token dropped
    pooled: Tensor  # (B, width or out_dim): ln_post(mean(tokens)), then @ proj if the model has one
    hidden_states: tuple[Tensor, ...] | None = None  # each (B, 1+N, width): embeddings, then every block


class VisionTransformer(nn.Module):
    """OpenVision ViT. `out_dim` adds open_clip's `proj` (width, out_dim) on the pooled feature."""

    def __init__(self, config: ViTConfig, out_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        width, patch = config.width, config.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        # Persistent so checkpoints carry it like open_clip's parameter; it is never trained.
        table = posemb_sincos_2d(config.grid_size, config.grid_size, width)
        self.register_buffer("positional_embedding", table, persistent=True)
        self.transformer = Transformer(config)
        self.ln_post = nn.LayerNorm(width, eps=config.ln_eps)
        self.proj = nn.Parameter(torch.empty(width, out_dim)) if out_dim is not None else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.conv1.in_channels * self.conv1.kernel_size[0] * self.conv1.kernel_size[1]
        nn.init.normal_(self.conv1.weight, std=fan_in**-0.5)
        nn.init.normal_(self.class_embedding, std=1e-6)
        if self.proj is not None:
            nn.init.normal_(self.proj, std=self.config.width**-0.5)

    def position_table(self, grid_h: int, grid_w: int) -> Tensor:
        """The (1 + grid_h*grid_w, width) table for an input grid; off the configured grid it is rebuilt, so
        any resolution works without interpolation and the stored buffer never changes."""
        grid = self.config.grid_size
        if (grid_h, grid_w) == (grid, grid):
            return self.positional_embedding
        return posemb_sincos_2d(grid_h, grid_w, self.config.width, device=self.positional_embedding.device)

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False) -> VisionOutput:
        x = self.conv1(pixel_values)
        grid_h, grid_w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_table(grid_h, grid_w).to(x.dtype)
        collect = [x] if output_hidden_states else None
        x = self.transformer(x, collect)
        tokens = x[:, 1:]
        pooled = self.ln_post(tokens.mean(dim=1))
        if self.proj is not None:
            pooled = pooled @ self.proj
        return VisionOutput(tokens=tokens, pooled=pooled, hidden_states=tuple(collect) if collect else None)


def num_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# Top-level names of open_clip's text tower (and CLIP-level scalars) that a vision loader skips.
_TEXT_TOWER_PREFIXES = (
    "text.",
    "text_decoder.",
    "token_embedding.",
    "ln_final.",
    "text_projection",
    "logit_scale",
    "logit_bias",
    "attn_mask",
)


def load_open_clip_state_dict(model: VisionTransformer, state_dict: Mapping[str, Tensor]) -> None:
    """Load an open_clip-format OpenVision vision tower (keys with or without `visual.`) into `model`.

    Text-tower keys are ignored. The position table is fixed by design, so the checkpoint's copy is only
    compared against the sin-cos table (a mismatch is logged and ours is kept). Raises ValueError naming
    every missing, unexpected or mis-shaped key.
    """
    if any(key.startswith("visual.") for key in state_dict):
        vision = {k.removeprefix("visual."): v for k, v in state_dict.items() if k.startswith("visual.")}
    else:
        vision = {k: v for k, v in state_dict.items() if not k.startswith(_TEXT_TOWER_PREFIXES)}

    ckpt_posemb = vision.pop("positional_embedding", None)
    if ckpt_posemb is not None:
        _check_position_table(ckpt_posemb, model.config.width)

    expected = {k: v for k, v in model.state_dict().items() if k != "positional_embedding"}
    missing = sorted(set(expected) - set(vision))
    unexpected = sorted(set(vision) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(vision[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(vision) & set(expected)
        if vision[k].shape != expected[k].shape
    )
    if missing or unexpected or misshaped:
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            hint = " (build the model with out_dim to load 'proj')" if "proj" in unexpected else ""
            problems.append(f"unexpected keys: {', '.join(unexpected)}{hint}")
        if misshaped:
            problems.append(f"mis-shaped keys: {'; '.join(misshaped)}")
        raise ValueError(f"checkpoint does not fit ViT {model.config.variant}: " + " | ".join(problems))

    vision["positional_embedding"] = model.positional_embedding
    model.load_state_dict(vision, strict=True)


def _check_position_table(table: Tensor, width: int) -> None:
    rows = table.shape[-2] - 1 if table.dim() >= 2 else -1
    grid = math.isqrt(rows) if rows > 0 else 0
    if table.dim() < 2 or grid * grid != rows or table.shape[-1] != width:
        logger.warning(
            "checkpoint positional_embedding has shape %s, not a square sin-cos table; keeping the fixed one",
            tuple(table.shape),
        )
        return
    reference = posemb_sincos_2d(grid, grid, width)
    # Half-precision checkpoints round the table; allow a couple of ulps of the stored dtype.
    atol = max(1e-4, 2 * torch.finfo(table.dtype).eps) if table.is_floating_point() else 1e-4
    if not torch.allclose(table.detach().float().cpu().reshape(reference.shape), reference, atol=atol):
        logger.warning(
            "checkpoint positional_embedding differs from the fixed 2-D sin-cos table; keeping the fixed one"
        )
