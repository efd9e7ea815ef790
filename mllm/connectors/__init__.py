"""Connectors (projectors) from vision features to the LLM's embedding space, behind a registry.

A connector maps (B, N, vision_width) to (B, M, llm_width); `num_tokens(N)` says what M is, so prompts
can reserve exactly as many image positions as the connector produces.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mllm.registry import Registry


class Connector(nn.Module):
    """Base class: `forward(features)` maps patch features to LLM embeddings."""

    def num_tokens(self, num_patches: int) -> int:
        """Image positions produced for `num_patches` input patches (token-preserving by default)."""
        return num_patches


CONNECTORS: Registry[type[Connector]] = Registry("connector")


@CONNECTORS.register("linear")
class LinearConnector(Connector):
    """One linear map (LLaVA-1.0)."""

    def __init__(self, vision_width: int, llm_width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(vision_width, llm_width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


@CONNECTORS.register("mlp2x_gelu")
class MLPConnector(Connector):
    """Linear -> GELU -> Linear (LLaVA-1.5's `mlp2x_gelu`)."""

    def __init__(self, vision_width: int, llm_width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_width, llm_width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(llm_width, llm_width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(features)))


@CONNECTORS.register("ln_mlp2x_gelu")
class NormedMLPConnector(MLPConnector):
    """LayerNorm -> Linear -> GELU -> Linear, as InternVL's projector. An encoder without a final norm on its
    tokens (OpenVision's big_vision ViT) hands over residual-stream features whose scale and per-channel
    offsets dwarf the LLM's embeddings; the norm lets the MLP learn from them at once."""

    def __init__(self, vision_width: int, llm_width: int) -> None:
        super().__init__(vision_width, llm_width)
        self.norm = nn.LayerNorm(vision_width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(features))


@CONNECTORS.register("pixel_shuffle2x2")
class PixelShuffleConnector(Connector):
    """Merges each 2x2 patch neighbourhood into one token (4x fewer image tokens), then Linear -> GELU -> Linear.

    The four patches of a neighbourhood are concatenated top-left, top-right, bottom-left, bottom-right, so the
    MLP input is 4 x vision_width. Needs a square patch grid with an even side (no class token).
    """

    def __init__(self, vision_width: int, llm_width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4 * vision_width, llm_width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(llm_width, llm_width)

    @staticmethod
    def grid_side(num_patches: int) -> int:
        side = math.isqrt(num_patches)
        if side * side != num_patches or side % 2:
            raise ValueError(
                f"pixel_shuffle2x2 needs a square patch grid with an even side, got {num_patches} tokens "
                "(a class token, e.g. use_cls=True, breaks the grid)"
            )
        return side

    def num_tokens(self, num_patches: int) -> int:
        self.grid_side(num_patches)
        return num_patches // 4

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, num_patches, width = features.shape
        half = self.grid_side(num_patches) // 2
        # (B, row pair, row in pair, col pair, col in pair, C) -> neighbourhoods in row-major grid order.
        grouped = features.reshape(batch, half, 2, half, 2, width).permute(0, 1, 3, 2, 4, 5)
        return self.fc2(self.act(self.fc1(grouped.reshape(batch, half * half, 4 * width))))


def build_connector(name: str, vision_width: int, llm_width: int) -> Connector:
    return CONNECTORS.get(name)(vision_width, llm_width)
