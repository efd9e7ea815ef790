"""Connectors (projectors) from vision features to the LLM's embedding space, behind a registry.

A connector maps (B, N, vision_width) to (B, M, llm_width); `num_tokens(N)` says what M is, so prompts
can reserve exactly as many image positions as the connector produces.
"""

from __future__ import annotations

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


def build_connector(name: str, vision_width: int, llm_width: int) -> Connector:
    return CONNECTORS.get(name)(vision_width, llm_width)
