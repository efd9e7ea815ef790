"""`mllm train`: run a recipe's stages on the Hugging Face Trainer.

The Trainer is the engine (devices, precision, gradient accumulation, torchrun / DeepSpeed / FSDP); this
module only decides what trains at which learning rate, feeds it the stage's data, and hands each stage's
model folder to the next.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from mllm.data.llava_json import ConversationDataset, collate
from mllm.data.sampling import GroupedByLength
from mllm.encoders.tower import build_tower
from mllm.llm import build_llm, load_tokenizer
from mllm.train_stages.stages import MODULES, StageConfig, TrainConfig
from mllm.vlm import VisionLanguageModel

log = logging.getLogger(__name__)


class LengthGroupedTrainer(Trainer):
    """The HF Trainer drawing batches of similar length from `lengths`, so little is spent on padding
    and no sample (nor its image) is loaded just to measure it."""

    def __init__(self, *args: Any, lengths: list[int] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lengths = lengths

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        if self.lengths is None:
            return super()._get_train_sampler(train_dataset)
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return GroupedByLength(self.lengths, batch, seed=self.args.seed)


class StageTrainer(LengthGroupedTrainer):
    """One optimizer group per trained module (own LR, decay on matrices only)."""

    def __init__(self, *args: Any, stage: StageConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage = stage

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            groups = []
            for module in self.stage.train:
                lr = self.stage.lr_overrides.get(module, self.stage.lr)
                params = [p for p in getattr(self.model, module).parameters() if p.requires_grad]
                groups.append({"params": [p for p in params if p.ndim >= 2], "lr": lr,
                               "weight_decay": self.stage.weight_decay})
                groups.append({"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0})
            self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.stage.lr,
                                               betas=(self.args.adam_beta1, self.args.adam_beta2),
                                               eps=self.args.adam_epsilon)
        return self.optimizer


def training_arguments(output_dir: Path, batch_size: int, lr: float, epochs: float, warmup_ratio: float, seed: int,
                       **more: Any) -> TrainingArguments:
    """What every run of ours asks of the Trainer: cosine schedule after a warm-up fraction, no Trainer
    checkpoints (stages write their own model folders), the accelerator when there is one."""
    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, learning_rate=lr,
        num_train_epochs=epochs, warmup_steps=warmup_ratio,  # a float below 1 is a fraction of all steps
        lr_scheduler_type="cosine", save_strategy="no", use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(), remove_unused_columns=False, seed=seed, **more,
    )


def assemble(cfg: TrainConfig) -> tuple[VisionLanguageModel, Any]:
    tokenizer = load_tokenizer(cfg.llm)
    model = VisionLanguageModel.assemble(build_tower(cfg.encoder), cfg.connector, build_llm(cfg.llm, tokenizer),
                                         tokenizer)
    return model, tokenizer


def set_trainable(model: VisionLanguageModel, train: list[str]) -> None:
    for name in MODULES:
        getattr(model, name).requires_grad_(name in train)


def run_stage(cfg: TrainConfig, stage: StageConfig, init: Path | None) -> dict[str, Any]:
    """Train one stage from `init` (a model folder) or from freshly assembled components."""
    torch.manual_seed(cfg.seed)
    model, tokenizer = VisionLanguageModel.from_pretrained(init) if init else assemble(cfg)
    model.tower.image = replace(model.tower.image, pad_to_square=stage.pad_to_square)
    dataset = ConversationDataset(
        stage.data, stage.image_folder, tokenizer, model.tower.image, stage.format, model.num_image_tokens,
        min(stage.max_length, tokenizer.model_max_length), stage.strict,
    )
    set_trainable(model, stage.train)
    stage_dir = Path(cfg.out) / stage.name
    args = training_arguments(
        stage_dir / "trainer", stage.batch_size, stage.lr, stage.epochs, stage.warmup_ratio, cfg.seed,
        gradient_accumulation_steps=stage.grad_accum, weight_decay=stage.weight_decay, max_steps=stage.max_steps,
        logging_steps=cfg.logging_steps, report_to=cfg.report_to or "none", bf16=cfg.bf16,
        dataloader_num_workers=cfg.num_workers, disable_tqdm=not cfg.progress,
    )
    trainer = StageTrainer(model=model, args=args, train_dataset=dataset, stage=stage,
                           lengths=dataset.lengths if stage.group_by_length else None,
                           data_collator=partial(collate, pad_id=tokenizer.pad_token_id))
    start = time.time()
    result = trainer.train()
    seconds = time.time() - start
    model.save_pretrained(stage_dir / "model", tokenizer)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "stage": stage.name, "trained": stage.train, "steps": result.global_step, "samples": len(dataset),
        "skipped": sum(dataset.skipped.values()), "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None, "train_loss": result.training_loss,
        "seconds": round(seconds, 1), "model": str(stage_dir / "model"),
    }


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run every stage in order; returns (and writes to `summary.json`) one summary per stage."""
    summaries = []
    previous: Path | None = None
    for stage in cfg.stages:
        if stage.init == "previous":
            init = previous
        elif stage.init == "fresh":
            init = None
        else:
            init = Path(stage.init)
        log.info("stage %s: training %s from %s", stage.name, stage.train, init or "fresh components")
        summaries.append(run_stage(cfg, stage, init))
        previous = Path(summaries[-1]["model"])
    summary = {"stages": summaries, "model": str(previous)}
    Path(cfg.out, "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
