"""Stages as data, recipes as lists of stages.

A stage names the modules it trains and their learning rates, its data, its prompt format and image
handling; everything else (the loop, distribution, precision) belongs to the engine. Each stage writes a
model folder; the next stage starts from the folder its `init` names ("previous" by default), so the
hand-off is explicit and any stage can be rerun on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mllm.encoders.tower import EncoderConfig
from mllm.llm import LLMConfig

MODULES = ("tower", "connector", "llm")


@dataclass
class StageConfig:
    """One training stage."""

    name: str = "align"
    data: str = "runs/world/stage_data/align.json"
    image_folder: str = "runs/world/images"
    format: str = "chat"  # "chat" (the tokenizer's chat template) or "plain" (image + caption)
    train: list[str] = field(default_factory=lambda: ["connector"])
    lr: float = 1e-3
    lr_overrides: dict[str, float] = field(default_factory=dict)  # e.g. {"tower": 2e-6}
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16  # per device; the global batch is batch_size x grad_accum x world size
    grad_accum: int = 1
    max_length: int = 2048
    pad_to_square: bool = True
    group_by_length: bool = True
    strict: bool = False
    init: str = "previous"  # "previous", "fresh" (assemble from the recipe's components) or a model folder

    def __post_init__(self) -> None:
        unknown = [m for m in [*self.train, *self.lr_overrides] if m not in MODULES]
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown module(s) {unknown}; expected some of {MODULES}")
        if not self.train:
            raise ValueError(f"stage {self.name!r} trains nothing")


@dataclass
class TrainConfig:
    """Options of `mllm train`: the components and the recipe's stages."""

    out: str = "runs/train"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    connector: str = "mlp2x_gelu"
    llm: LLMConfig = field(default_factory=LLMConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    seed: int = 0
    bf16: bool = False
    logging_steps: int = 10
    num_workers: int = 0
    report_to: list[str] = field(default_factory=list)
    progress: bool = True  # the Trainer's progress bars
