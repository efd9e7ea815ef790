"""`mllm train`: run a recipe's stages on the Hugging Face Trainer.

The Trainer is the engine (devices, precision, gradient accumulation, torchrun / DeepSpeed / FSDP); this
module only decides what trains at which learning rate, feeds it the stage's data, and hands each stage's
model folder to the next.

Layout of a run: `<out>/<stage>/model` (the stage's model folder), `<out>/<stage>/done.json` (the stage's
summary, written last: a stage with it is skipped when a run resumes), `<out>/<stage>/checkpoints/checkpoint-N`
(Trainer checkpoints every `checkpoint_every` steps), `<out>/<stage>/checkpoints/runs` (TensorBoard) and
`<out>/<stage>/adapter` (LoRA / QLoRA stages).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mllm.data.llava_json import ConversationDataset, collate
from mllm.data.sampling import GroupedByLength, GroupedByModality
from mllm.encoders.tower import build_tower
from mllm.eval.during_training import EvalDuringTraining
from mllm.llm import build_llm, load_tokenizer
from mllm.logging_utils import is_main_process
from mllm.train_stages import lora
from mllm.train_stages.callbacks import (
    CompleteMarkerCallback,
    ThroughputCallback,
    complete_checkpoints,
    remove_incomplete_checkpoints,
)
from mllm.train_stages.stages import MODULES, StageConfig, TrainConfig
from mllm.vlm import VisionLanguageModel

log = logging.getLogger(__name__)

CHECKPOINT_WEIGHTS = "trainable.safetensors"
DONE_FILE = "done.json"


class LengthGroupedTrainer(Trainer):
    """The HF Trainer drawing batches of similar length from `lengths`, so little is spent on padding
    and no sample (nor its image) is loaded just to measure it; with `has_image`, image and text-only
    samples also go to separate batches (LLaVA's group_by_modality_length)."""

    def __init__(self, *args: Any, lengths: list[int] | None, has_image: list[bool] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lengths, self.has_image = lengths, has_image

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        if self.lengths is None:
            return super()._get_train_sampler(train_dataset)
        # One global batch of a kind: the engine deals its per-device parts to the processes.
        args = self.args
        batch = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        if self.has_image is not None:
            return GroupedByModality(self.lengths, self.has_image, batch, seed=args.seed)
        return GroupedByLength(self.lengths, batch, seed=args.seed)


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

    # A checkpoint holds the trainable parameters only: the frozen ones are rebuilt exactly from the stage's
    # init when it resumes, a LoRA checkpoint stays adapter-sized, and a tied embedding (one Parameter under
    # two state-dict names, which safetensors refuses) appears once in `named_parameters`.
    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        full = state_dict if state_dict is not None else {}
        weights = {name: full.get(name, param).detach().cpu().contiguous()
                   for name, param in self.model.named_parameters() if param.requires_grad}
        safetensors.torch.save_file(weights, str(out / CHECKPOINT_WEIGHTS), metadata={"format": "pt"})
        torch.save(self.args, out / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        model = model or self.model
        weights = safetensors.torch.load_file(str(Path(resume_from_checkpoint) / CHECKPOINT_WEIGHTS))
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        if set(weights) != trainable:
            raise ValueError(f"checkpoint {resume_from_checkpoint} does not match the stage's trainable parameters: "
                             f"missing {sorted(trainable - set(weights))[:5]}, "
                             f"unexpected {sorted(set(weights) - trainable)[:5]}")
        model.load_state_dict(weights, strict=False)


def training_arguments(output_dir: Path, batch_size: int, lr: float, epochs: float, warmup_ratio: float, seed: int,
                       checkpoint_every: int = 0, **more: Any) -> TrainingArguments:
    """What every run of ours asks of the Trainer: a cosine schedule (unless `more` names another) after a
    warm-up fraction, the accelerator
    when there is one, and Trainer checkpoints only every `checkpoint_every` steps when asked (stages write
    their own model folders)."""
    saving = {"save_strategy": "steps", "save_steps": checkpoint_every} if checkpoint_every else {"save_strategy": "no"}
    more.setdefault("lr_scheduler_type", "cosine")
    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, learning_rate=lr,
        num_train_epochs=epochs, warmup_steps=warmup_ratio,  # a float below 1 is a fraction of all steps
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(), remove_unused_columns=False, seed=seed, **saving, **more,
    )


def engine_options(cfg: TrainConfig, model: VisionLanguageModel) -> dict[str, Any]:
    """DeepSpeed or FSDP for the Trainer. Our model is not a PreTrainedModel, so FSDP's auto-wrap is told the
    LLM's decoder-layer classes unless an FSDP config says otherwise."""
    if cfg.deepspeed:
        return {"deepspeed": deepspeed_config(Path(cfg.deepspeed), model.llm.config.hidden_size)}
    if not cfg.fsdp:
        return {}
    fsdp_config: str | dict[str, Any] | None = cfg.fsdp_config
    if fsdp_config is None and "auto_wrap" in cfg.fsdp:
        fsdp_config = {"transformer_layer_cls_to_wrap": list(model.llm._no_split_modules or [])}
    return {"fsdp": cfg.fsdp, "fsdp_config": fsdp_config}


def deepspeed_config(path: Path, hidden_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON with its hidden-size "auto" values filled in. The HF integration fills the rest but
    reads these from `model.config.hidden_size`, which our composite model lacks; same formulas, the LLM's size."""
    config = json.loads(path.read_text())
    zero = config.get("zero_optimization", {})
    by_hidden_size = {"reduce_bucket_size": hidden_size * hidden_size,
                      "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
                      "stage3_param_persistence_threshold": 10 * hidden_size}
    for key, value in by_hidden_size.items():
        if zero.get(key) == "auto":
            zero[key] = value
    return config


def assemble(cfg: TrainConfig) -> tuple[VisionLanguageModel, Any]:
    tokenizer = load_tokenizer(cfg.llm)
    model = VisionLanguageModel.assemble(build_tower(cfg.encoder), cfg.connector, build_llm(cfg.llm, tokenizer),
                                         tokenizer)
    return model, tokenizer


def set_trainable(model: VisionLanguageModel, train: list[str]) -> None:
    for name in MODULES:
        getattr(model, name).requires_grad_(name in train)


def set_image_aspect(model: VisionLanguageModel, stage: StageConfig) -> None:
    """Apply the stage's image handling. AnyRes is switched on (with a fresh newline) or kept; a model that
    is already AnyRes is never silently turned back into a fixed-size one."""
    if stage.image_aspect == "anyres" or (stage.image_aspect is None and model.anyres is not None):
        model.enable_anyres(stage.grid_pinpoints or model.grid_pinpoints)
        return
    if model.anyres is not None:
        raise ValueError(f"stage {stage.name!r}: the model is AnyRes (its newline is trained); image_aspect "
                         f"{stage.image_aspect!r} cannot switch it back")
    pad = stage.pad_to_square if stage.image_aspect is None else stage.image_aspect == "pad"
    model.tower.image = replace(model.tower.image, pad_to_square=pad)


def prepare_llm(cfg: TrainConfig, stage: StageConfig, model: VisionLanguageModel, init: Path | None,
                vocab_size: int) -> Path | None:
    """Activation checkpointing and adapters for the stage's LLM (after `set_trainable`). Returns the LLM
    folder a QLoRA base was quantized from, which its merge goes back to."""
    quantized_from = None
    if stage.llm_mode == "qlora":
        quantized_from = init / "llm" if init else Path(cfg.llm.path) if cfg.llm.path else None
        if quantized_from is None:
            raise ValueError(f"stage {stage.name!r}: qlora loads its LLM from a folder; set llm.path or start the "
                             "stage from a model folder")
        model.llm = lora.load_llm_4bit(quantized_from, torch.bfloat16 if cfg.bf16 else torch.float32, vocab_size)
    if cfg.gradient_checkpointing:
        # Also hooks the input embeddings to require grad, so frozen embeddings still pass gradients on.
        model.llm.activation_checkpointing_enable()
    if stage.llm_mode != "full":
        model.llm = lora.add_adapters(model.llm, stage.lora)
    return quantized_from


def in_data_root(cfg: TrainConfig, path: str) -> Path:
    """A stage's data path: relative ones start at the recipe's `data_root`."""
    return Path(cfg.data_root, path) if cfg.data_root else Path(path)


def gathered_parameters(trainer: Trainer) -> contextlib.AbstractContextManager[Any]:
    """Under ZeRO-3 every rank holds a shard of each parameter; saving needs them whole (all ranks join)."""
    if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(trainer.model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


def run_stage(cfg: TrainConfig, stage: StageConfig, init: Path | None,
              resume_from: Path | None = None) -> dict[str, Any]:
    """Train one stage from `init` (a model folder) or from freshly assembled components, continuing from
    the Trainer checkpoint `resume_from` when given."""
    torch.manual_seed(cfg.seed)
    model, tokenizer = VisionLanguageModel.from_pretrained(init) if init else assemble(cfg)
    set_image_aspect(model, stage)
    dataset = ConversationDataset(
        in_data_root(cfg, stage.data), in_data_root(cfg, stage.image_folder), tokenizer, model.tower.image,
        stage.format, model.num_image_tokens,
        min(stage.max_length, tokenizer.model_max_length), stage.strict, model.anyres,
    )
    set_trainable(model, stage.train)
    quantized_from = prepare_llm(cfg, stage, model, init, len(tokenizer))
    stage_dir = Path(cfg.out) / stage.name
    args = training_arguments(
        stage_dir / "checkpoints", stage.batch_size, stage.lr, stage.epochs, stage.warmup_ratio, cfg.seed,
        checkpoint_every=cfg.checkpoint_every, save_total_limit=cfg.keep_checkpoints,
        gradient_accumulation_steps=stage.grad_accum, weight_decay=stage.weight_decay, max_steps=stage.max_steps,
        logging_steps=cfg.logging_steps, report_to=cfg.report_to or "none", bf16=cfg.bf16,
        dataloader_num_workers=cfg.num_workers, disable_tqdm=not cfg.progress,
        # A trained tower's blocks past its feature layer get no gradient, which DDP must be told to expect.
        include_num_input_tokens_seen="non_padding", ddp_find_unused_parameters="tower" in stage.train,
        **engine_options(cfg, model),
    )
    throughput = ThroughputCallback()
    trainer = StageTrainer(model=model, args=args, train_dataset=dataset, stage=stage,
                           lengths=dataset.lengths if stage.group_by_length or stage.group_by_modality else None,
                           has_image=dataset.has_image if stage.group_by_modality else None,
                           data_collator=partial(collate, pad_id=tokenizer.pad_token_id),
                           callbacks=[CompleteMarkerCallback()])
    trainer.callback_handler.callbacks.insert(0, throughput)  # ahead of the reporters, which log what it adds
    if stage.eval_every:
        evaluation = EvalDuringTraining(stage.eval_every, in_data_root(cfg, stage.eval_data), stage.eval_benchmarks,
                                        stage.eval_limit, tokenizer, batch_size=stage.batch_size)
        trainer.callback_handler.callbacks.insert(0, evaluation)  # also ahead of the reporters
    start = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.time() - start
    with gathered_parameters(trainer):
        if args.should_save:
            if stage.llm_mode != "full":
                adapter = lora.save_adapter(model.llm, stage_dir)
                model.llm = lora.merged_llm(model.llm, adapter, quantized_from)
            model.save_pretrained(stage_dir / "model", tokenizer)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "stage": stage.name, "trained": stage.train, "llm_mode": stage.llm_mode, "steps": result.global_step,
        "samples": len(dataset), "skipped": sum(dataset.skipped.values()),
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss, "seconds": round(seconds, 1),
        "samples_per_second": result.metrics.get("train_samples_per_second"), **throughput.totals(trainer.state),
        "resumed_from": str(resume_from) if resume_from else None, "model": str(stage_dir / "model"),
    }
    if args.should_save:
        (stage_dir / DONE_FILE).write_text(json.dumps(summary, indent=1))
    trainer.accelerator.wait_for_everyone()  # the next stage loads this one's folder on every rank
    return summary


def checkpoint_to_resume(cfg: TrainConfig, stage_dir: Path) -> Path | None:
    """The checkpoint this stage continues from under `cfg.resume`; without resuming, stale checkpoints of an
    earlier run go, so that a later `--resume latest` cannot pick one of them."""
    folder = stage_dir / "checkpoints"
    if cfg.resume is None:
        if is_main_process() and folder.is_dir() and any(folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")):
            log.warning("not resuming: removing the earlier run's checkpoints in %s", folder)
            for old in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                shutil.rmtree(old)
        return None
    if cfg.resume == "latest":
        if is_main_process():
            remove_incomplete_checkpoints(folder)
        complete = complete_checkpoints(folder)
        return complete[-1] if complete else None
    chosen = Path(cfg.resume)
    if chosen.parent.resolve() != folder.resolve():
        return None
    if chosen not in complete_checkpoints(folder):
        raise ValueError(f"not a complete checkpoint: {chosen}")
    return chosen


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run every stage in order; returns (and writes to `summary.json`) one summary per stage. When resuming,
    a stage that finished is skipped and the others continue from their latest complete checkpoint."""
    stage_dirs = [Path(cfg.out) / stage.name for stage in cfg.stages]
    if cfg.resume not in (None, "latest") and Path(cfg.resume).parent.resolve() not in {
            (d / "checkpoints").resolve() for d in stage_dirs}:
        raise ValueError(f"--resume {cfg.resume}: not a checkpoint folder of any stage under {cfg.out}")
    summaries = []
    previous: Path | None = None
    for stage, stage_dir in zip(cfg.stages, stage_dirs, strict=True):
        if stage.init == "previous":
            init = previous
        elif stage.init == "fresh":
            init = None
        else:
            init = Path(stage.init)
        done = stage_dir / DONE_FILE
        if cfg.resume is not None and done.is_file() and (stage_dir / "model").is_dir():
            log.info("stage %s: finished in an earlier run, skipped", stage.name)
            summaries.append(json.loads(done.read_text()))
        else:
            resume_from = checkpoint_to_resume(cfg, stage_dir)
            if is_main_process():
                done.unlink(missing_ok=True)  # a stage retrained from here on is not done until it says so
            log.info("stage %s: training %s (llm %s) from %s%s", stage.name, stage.train, stage.llm_mode,
                     init or "fresh components", f", resuming {resume_from}" if resume_from else "")
            summaries.append(run_stage(cfg, stage, init, resume_from))
        previous = Path(summaries[-1]["model"])
    summary = {"stages": summaries, "model": str(previous)}
    if is_main_process():
        Path(cfg.out, "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
