"""Stages as data, recipes as lists of stages.

A stage names the modules it trains and their learning rates, its data, its prompt format and image
handling; everything else (the loop, distribution, precision) belongs to the engine. Each stage writes a
model folder; the next stage starts from the folder its `init` names ("previous" by default), so the
hand-off is explicit and any stage can be rerun on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mllm.encoders.tower import EncoderConfig
from mllm.llm import LLMConfig

MODULES = ("tower", "connector", "llm")
# "resize" squashes an image to the tower's square, "pad" letterboxes it to a square in the mean colour first
# (LLaVA-1.5), "anyres" tiles it at high resolution (LLaVA-NeXT / Open-LLaVA-NeXT, mllm/data/anyres.py).
IMAGE_ASPECTS = ("resize", "pad", "anyres")
LLM_MODES = ("full", "lora", "qlora")


@dataclass
class LoraSettings:
    """The adapters of a `lora` / `qlora` stage (peft's LoraConfig); LLaVA's LoRA recipe uses r 128, alpha 256."""

    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"  # peft's shorthand: every linear layer but the LM head


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
    pad_to_square: bool = True  # read only when image_aspect is unset: True is "pad", False "resize"
    # Image handling, one of IMAGE_ASPECTS. Unset keeps an AnyRes model AnyRes (the mode, once switched on,
    # stays for later stages) and otherwise follows pad_to_square.
    image_aspect: str | None = None
    grid_pinpoints: list[list[int]] = field(default_factory=list)  # AnyRes [height, width]s; empty: LLaVA-NeXT's
    group_by_length: bool = True
    group_by_modality: bool = False  # LLaVA's group_by_modality_length: image and text-only samples batch apart
    strict: bool = False
    init: str = "previous"  # "previous", "fresh" (assemble from the recipe's components) or a model folder
    # How a trained "llm" learns: all weights, LoRA adapters, or adapters on a 4-bit base (QLoRA). Either
    # adapter mode saves merged weights, so the next stage and exporters see a plain model.
    llm_mode: str = "full"
    lora: LoraSettings = field(default_factory=LoraSettings)
    # Every eval_every optimizer steps the live model answers the first eval_limit rows of eval_benchmarks
    # ("all" or "pope,gqa") from eval_data (a folder like `mllm eval run --data`, relative to data_root) and
    # the headlines land in the log history as eval_<benchmark> (mllm/eval/during_training.py). 0: never.
    eval_every: int = 0
    eval_benchmarks: str = "all"
    eval_data: str = "runs/world/benchmarks"
    eval_limit: int = 16

    def __post_init__(self) -> None:
        unknown = [m for m in [*self.train, *self.lr_overrides] if m not in MODULES]
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown module(s) {unknown}; expected some of {MODULES}")
        if not self.train:
            raise ValueError(f"stage {self.name!r} trains nothing")
        if self.image_aspect is not None and self.image_aspect not in IMAGE_ASPECTS:
            raise ValueError(f"stage {self.name!r}: unknown image_aspect {self.image_aspect!r}; "
                             f"choose one of {IMAGE_ASPECTS}")
        if self.grid_pinpoints and self.image_aspect != "anyres":
            raise ValueError(f"stage {self.name!r}: grid_pinpoints need image_aspect 'anyres'")
        if self.llm_mode not in LLM_MODES:
            raise ValueError(f"stage {self.name!r}: unknown llm_mode {self.llm_mode!r}; choose one of {LLM_MODES}")
        if self.eval_every < 0 or self.eval_limit < 1:
            raise ValueError(f"stage {self.name!r}: eval_every must be >= 0 and eval_limit >= 1")
        if self.eval_every:
            from mllm.eval.benchmarks import parse_benchmarks

            parse_benchmarks(self.eval_benchmarks)
        if self.llm_mode != "full" and "llm" not in self.train:
            raise ValueError(f"stage {self.name!r}: llm_mode {self.llm_mode!r} adapts the LLM, so 'llm' must be "
                             "in train")


@dataclass
class TrainConfig:
    """Options of `mllm train`: the components and the recipe's stages."""

    out: str = "runs/train"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    connector: str = "mlp2x_gelu"
    llm: LLMConfig = field(default_factory=LLMConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    data_root: str = ""  # where the stages' relative data and image_folder paths start ("": the working directory)
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False  # recompute the LLM's activations in backward (HF activation checkpointing)
    deepspeed: str | None = None  # a DeepSpeed JSON (configs/deepspeed/zero2.json, zero3.json); launch with torchrun
    fsdp: str = ""  # the Trainer's fsdp string, e.g. "full_shard auto_wrap"; empty: off
    fsdp_config: str | None = None  # a JSON of FSDP options; unset with auto_wrap: wrap the LLM's decoder layers
    logging_steps: int = 10
    num_workers: int = 0
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # add "wandb" for Weights & Biases
    progress: bool = True  # the Trainer's progress bars
    resume: str | None = None  # "latest" (each stage's newest complete checkpoint) or one checkpoint folder
    checkpoint_every: int = 0  # optimizer steps between Trainer checkpoints under <out>/<stage>/checkpoints; 0: none
    keep_checkpoints: int = 2  # the newest K checkpoints are kept

    def __post_init__(self) -> None:
        if self.deepspeed and self.fsdp:
            raise ValueError("choose one of deepspeed and fsdp")
        if self.deepspeed and not Path(self.deepspeed).is_file():
            raise FileNotFoundError(f"DeepSpeed config not found: {self.deepspeed}")
