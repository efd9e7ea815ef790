"""Options of `mllm pretrain` and the resolution phases they describe.

A run without `phases` is one phase of its top-level values (`model.image_size`, `samples`, `optim.base_lr`,
`optim.warmup_samples`, `batch_size`). With `phases`, each entry is one resolution phase of a progressive
schedule (the paper pretrains at 84 px, then fine-tunes at 224 px) and its unset fields take those values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mllm.data.shards import ShardConfig
from mllm.encoders.objective_options import ModelOptions

STRATEGIES = ("auto", "single", "ddp", "fsdp")
PRECISIONS = ("fp32", "bf16")


@dataclass
class OptimConfig:
    """AdamW and the warm-up + cosine schedule (a phase may set its own base_lr and warm-up)."""

    base_lr: float = 8e-6  # peak LR = base_lr * global batch / 256
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.2
    warmup_samples: int = 51_200_000
    # The vision tower's peak LR as a fraction of the rest's (the paper trains all at one LR: 1.0).
    encoder_lr_scale: float = 1.0


@dataclass
class PhaseConfig:
    """One resolution phase of a progressive schedule; an unset field takes the run's value (`model.image_size`,
    `samples`, `optim.base_lr`, `optim.warmup_samples`, `batch_size`)."""

    image_size: int | None = None
    samples: int | None = None
    base_lr: float | None = None
    warmup_samples: int | None = None
    batch_size: int | None = None  # per process


@dataclass
class PretrainConfig:
    """Options of `mllm pretrain`."""

    out: str = "runs/pretrain"
    objective: str = "ov2"  # ov2, ov1 or cappa
    model: ModelOptions = field(default_factory=ModelOptions)
    tokenizer: str = "runs/world/tokenizer"
    data: ShardConfig = field(default_factory=ShardConfig)
    batch_size: int = 256  # per process: the global batch is batch_size x world size
    samples: int = 12_800_000
    optim: OptimConfig = field(default_factory=OptimConfig)
    phases: list[PhaseConfig] = field(default_factory=list)  # empty: one phase of the values above
    init: str | None = None  # run folder, objective.safetensors or exported encoder to start from
    seed: int = 0
    log_every: int = 20
    num_workers: int = 0
    device: str = "auto"
    strategy: str = "auto"  # auto, single, ddp or fsdp
    precision: str = "fp32"  # fp32 or bf16 (autocast)
    grad_checkpointing: bool = False  # recompute each transformer block's activations in the backward pass
    compile: bool = False  # torch.compile each transformer block
    checkpoint_every: int = 0  # steps between resumable checkpoints (and at each phase end); 0: none
    keep_checkpoints: int = 2
    resume: str | None = None  # "latest" (a no-op when the run has no checkpoint yet) or a checkpoint folder
    # Resume at the same sample by replaying the phase's shard stream past the consumed batches (exact, but
    # every skipped image is decoded again); false starts a fresh stream seeded by the step instead (instant).
    replay_on_resume: bool = True


@dataclass(frozen=True)
class Phase:
    """A phase with every value resolved."""

    image_size: int
    samples: int
    base_lr: float
    warmup_samples: int
    batch_size: int


def resolve_phases(cfg: PretrainConfig) -> list[Phase]:
    """The phases a run trains (without `phases`, one phase of the top-level values); raises ValueError for
    any option out of range, the run's as well as the phases'."""
    phases = [
        Phase(
            image_size=cfg.model.image_size if spec.image_size is None else spec.image_size,
            samples=cfg.samples if spec.samples is None else spec.samples,
            base_lr=cfg.optim.base_lr if spec.base_lr is None else spec.base_lr,
            warmup_samples=cfg.optim.warmup_samples if spec.warmup_samples is None else spec.warmup_samples,
            batch_size=cfg.batch_size if spec.batch_size is None else spec.batch_size,
        )
        for spec in cfg.phases or [PhaseConfig()]
    ]
    for number, phase in enumerate(phases, 1):
        if phase.samples <= 0 or phase.batch_size <= 0 or phase.base_lr < 0 or phase.warmup_samples < 0:
            raise ValueError(f"phase {number} needs positive samples and batch_size and a non-negative base_lr "
                             f"and warmup_samples, got {phase}")
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if cfg.log_every < 1 or cfg.checkpoint_every < 0 or cfg.keep_checkpoints < 1:
        raise ValueError("log_every and keep_checkpoints must be at least 1 and checkpoint_every at least 0")
    if cfg.optim.encoder_lr_scale < 0:
        raise ValueError(f"optim.encoder_lr_scale must be at least 0, got {cfg.optim.encoder_lr_scale}")
    return phases
