"""`mllm pretrain`: train a vision encoder with a pretraining objective on image-caption shards.

The schedule is OpenVision's: AdamW (betas 0.9/0.95) with weight decay on weight matrices only, peak
LR = base_lr x global batch / 256, linear warm-up then cosine decay to zero, the budget counted in samples
seen. The objective is `ov2` (OpenVision 2), `ov1` (OpenVision) or `cappa` (CapPa); `model` holds the options
of all three and only those of the chosen one may differ from their defaults.

One loop serves one process, DDP and FSDP2 under torchrun (`strategy`, see `distributed.py`); `batch_size` is
per process, so the global batch is batch_size x world size. Progressive resolution: `phases` lists the
resolution phases of one command (each with its own image size, samples, base LR, warm-up and batch, and a
fresh optimizer, as the paper's fine-tuning stage), and each phase starts from the previous one's export;
`init` starts a run from an earlier run's weights, so the same schedule also runs as chained commands.

The run folder receives, at the end of the last phase, the exported encoder (`encoder/`, open_clip key
names) and the whole objective (`objective.safetensors`); earlier phases export to `phase<N>/`. Also
`metrics.jsonl`, `summary.json` and, with `checkpoint_every`, resumable training state under `checkpoints/`
(`checkpoint.py`; `--resume latest` continues a run). Only rank 0 logs and writes files, apart from each
rank's part of a checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from mllm.data.images import ImageConfig
from mllm.data.shards import CaptionShards
from mllm.encoders.objective_options import objective_config
from mllm.encoders.objectives import OBJECTIVES, PretrainObjective
from mllm.train_stages.checkpoint import (
    TrainerState,
    find_checkpoint,
    load_checkpoint,
    read_state,
    restore_rng,
    rewind,
    save_checkpoint,
)
from mllm.train_stages.distributed import (
    Runtime,
    autocast,
    finish,
    mean_over_ranks,
    prepare_blocks,
    start,
    sum_over_ranks,
    wrap,
)
from mllm.train_stages.pretrain_config import OptimConfig, Phase, PretrainConfig, resolve_phases
from mllm.train_stages.weights import export, load_init

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def boundary_ids(tokenizer: Any) -> tuple[int, int]:
    """The ids that open and close a caption: bos and eos, or [CLS] and [SEP] for a BERT-style WordPiece
    vocabulary such as the bert-base-uncased one the OpenVision release tokenizes with."""
    if tokenizer.bos_token_id is not None and tokenizer.eos_token_id is not None:
        return tokenizer.bos_token_id, tokenizer.eos_token_id
    if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
        return tokenizer.cls_token_id, tokenizer.sep_token_id
    raise ValueError("the caption tokenizer needs bos and eos tokens (or BERT's [CLS] and [SEP])")


def caption_tokenizer(tokenizer: Any, max_len: int) -> Callable[[str], torch.Tensor]:
    """Caption -> `[bos] w1..wn [eos]` ids, truncated to `max_len` (eos kept)."""
    bos, eos = boundary_ids(tokenizer)

    def tokenize(caption: str) -> torch.Tensor:
        ids = tokenizer(caption, add_special_tokens=False)["input_ids"][: max_len - 2]
        return torch.tensor([bos, *ids, eos])

    return tokenize


def text_row_tokenizer(tokenizer: Any, length: int) -> Callable[[str], torch.Tensor]:
    """Text -> exactly `length` ids `[bos] w1..wn [eos] pad... [pool]` for a text encoder that pools its last
    position; the pooling token is the tokenizer's cls token, or eos when it has none."""
    bos, eos = boundary_ids(tokenizer)
    if tokenizer.pad_token_id is None:
        raise ValueError("the text-encoder tokenizer needs a pad token")
    pool = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else eos

    def tokenize(text: str) -> torch.Tensor:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: length - 3]
        row = [bos, *ids, eos]
        return torch.tensor(row + [tokenizer.pad_token_id] * (length - 1 - len(row)) + [pool])

    return tokenize


def pad_captions(batch: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack a batch, padding `caption_ids` to the longest; fixed-length text rows are stacked as they are."""
    captions = torch.nn.utils.rnn.pad_sequence([b["caption_ids"] for b in batch], batch_first=True,
                                               padding_value=pad_id)
    out = {"pixel_values": torch.stack([b["pixel_values"] for b in batch]), "caption_ids": captions}
    for key in batch[0].keys() - out.keys():
        out[key] = torch.stack([b[key] for b in batch])
    return out


def build_optimizer(objective: PretrainObjective, cfg: OptimConfig, lr: float) -> torch.optim.AdamW:
    skip = objective.no_weight_decay_names()
    named = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    # 0-dim parameters (ov1's logit_scale) get a group of their own: FSDP keeps them whole beside sharded
    # ones, and the optimizer's multi-tensor kernels cannot take both kinds in one group.
    kinds = [
        ([(n, p) for n, p in named if n not in skip], cfg.weight_decay),
        ([(n, p) for n, p in named if n in skip and p.ndim > 0], 0.0),
        ([(n, p) for n, p in named if n in skip and p.ndim == 0], 0.0),
    ]
    tower = {id(p) for p in objective.encoder.parameters()}
    groups = [{"params": [p for _, p in members if (id(p) in tower) == in_tower], "weight_decay": decay,
               "lr": lr * (cfg.encoder_lr_scale if in_tower else 1.0)}
              for in_tower in (False, True) for members, decay in kinds]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=cfg.betas, eps=cfg.eps)


@dataclass
class _Run:
    """What the phases of one `pretrain` call share."""

    cfg: PretrainConfig
    phases: list[Phase]
    runtime: Runtime
    tokenizer: Any
    out: Path
    history: list[dict[str, float]]
    metrics: TextIO | None  # rank 0 only
    skipped: int = 0
    samples_run: int = 0  # by this process's steps: a resumed run's throughput counts only its own
    train_seconds: float = 0.0  # in the step loops, so throughput leaves out building, replay and export

    def record(self, record: dict[str, float]) -> None:
        self.history.append(record)
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()


def _open_metrics(out: Path, keep_until: int) -> tuple[list[dict[str, float]], TextIO]:
    """Rank 0's metrics file; a resumed run keeps the records up to its checkpoint's step and continues."""
    path = out / "metrics.jsonl"
    history: list[dict[str, float]] = []
    if keep_until > 0 and path.is_file():
        history = [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= keep_until]
    handle = open(path, "w")
    handle.writelines(json.dumps(r) + "\n" for r in history)
    return history, handle


def _build_model(run: _Run, index: int, resumed: bool) -> tuple[PretrainObjective, nn.Module]:
    """Phase `index`'s objective, started from `init` or the previous phase's export unless a checkpoint
    follows, and the module the loop calls (the objective, sharded in place or wrapped by DDP)."""
    cfg, phase = run.cfg, run.phases[index]
    # The same seed on every rank: under FSDP each rank builds the model it then shards, so the builds agree.
    torch.manual_seed(cfg.seed + 1000 * index)
    model_cfg = objective_config(cfg.objective, replace(cfg.model, image_size=phase.image_size))
    objective: PretrainObjective = OBJECTIVES.get(cfg.objective)(
        model_cfg, vocab_size=len(run.tokenizer), pad_id=run.tokenizer.pad_token_id)
    init = cfg.init if index == 0 else str(run.out / f"phase{index}")
    if not resumed and init:
        load_init(objective, Path(init))
    objective.to(run.runtime.device).train()
    prepare_blocks(objective, cfg.grad_checkpointing, cfg.compile)
    model = wrap(objective, run.runtime, cfg.precision)
    torch.manual_seed(cfg.seed + 1000 * index + 1 + run.runtime.rank)  # ranks draw different token subsets
    return objective, model


def _stream(run: _Run, index: int, objective: PretrainObjective, offset: int,
            replayed: int) -> tuple[CaptionShards, Iterator[dict[str, Tensor]]]:
    """Phase `index`'s batches at its image size, past its first `replayed` batches. Seeded per phase, so a
    phase does not repeat the sample order of the one before, and by `offset` (the step of a resume that
    does not replay the stream)."""
    cfg, phase, tokenizer = run.cfg, run.phases[index], run.tokenizer
    text_length = objective.text_length()
    dataset = CaptionShards(
        cfg.data, ImageConfig(size=phase.image_size), caption_tokenizer(tokenizer, cfg.model.max_text_len),
        cfg.seed + index + 1000 * offset,
        text_tokenize=None if text_length is None else text_row_tokenizer(tokenizer, text_length),
    ).skip(replayed * phase.batch_size, phase.batch_size)
    # An own generator keeps the loader from drawing on the global RNG, whose state a checkpoint restores.
    loader = DataLoader(dataset, batch_size=phase.batch_size, num_workers=cfg.num_workers,
                        collate_fn=partial(pad_captions, pad_id=tokenizer.pad_token_id),
                        generator=torch.Generator().manual_seed(cfg.seed))
    return dataset, iter(loader)


def _train_phase(run: _Run, index: int, state: TrainerState, resume: Path | None) -> None:
    """Train phase `index` from its start, or from the checkpoint `resume` taken inside it, then export it."""
    cfg, runtime, phase = run.cfg, run.runtime, run.phases[index]
    device = runtime.device
    objective, model = _build_model(run, index, resume is not None)
    global_batch = phase.batch_size * runtime.world_size
    steps = math.ceil(phase.samples / global_batch)
    lr = phase.base_lr * global_batch / 256
    optimizer = build_optimizer(objective, cfg.optim, lr)
    warmup = min(steps, math.ceil(phase.warmup_samples / global_batch))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    replay = resume is None or cfg.replay_on_resume
    replayed = state.phase_step if resume is not None and replay else 0
    dataset, batches = _stream(run, index, objective, 0 if replay else state.phase_step, replayed)
    if resume is not None:
        if state.global_batch != global_batch:
            raise ValueError(f"checkpoint {resume} was written with a global batch of {state.global_batch}, "
                             f"this run has {global_batch}: keep batch_size x processes unchanged to resume")
        load_checkpoint(resume, model, optimizer, scheduler)
        log.info("resuming phase %d after %d of its steps: %s", index + 1, state.phase_step,
                 "replaying the shard stream past their batches" if replay else "on a fresh shard stream")
        restore_rng(resume, runtime)
    else:
        state.phase, state.phase_step = index, 0
    state.global_batch, state.world_size = global_batch, runtime.world_size
    log.info("phase %d/%d: %s at %d px, %d steps of %d (%d per process), peak lr %.3g, warm-up %d steps, %s on %s",
             index + 1, len(run.phases), cfg.objective, phase.image_size, steps, global_batch, phase.batch_size,
             lr, warmup, runtime.strategy, device)

    loop_start = time.time()
    with tqdm(total=steps, initial=state.phase_step, desc=f"pretrain {index + 1}", unit="step",
              disable=not runtime.is_main) as bar:
        while state.phase_step < steps:
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            with autocast(device, cfg.precision):
                logs = model(batch)
            optimizer.zero_grad(set_to_none=True)
            logs["loss"].backward()
            optimizer.step()
            scheduler.step()
            state.step, state.phase_step = state.step + 1, state.phase_step + 1
            state.samples += global_batch
            run.samples_run += global_batch
            bar.update()
            if state.step % cfg.log_every == 0 or state.phase_step in (1, steps):
                record = {"step": state.step, "phase": index + 1, "samples": state.samples,
                          "lr": scheduler.get_last_lr()[0], **mean_over_ranks(logs, runtime)}
                run.record(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            if cfg.checkpoint_every and (state.step % cfg.checkpoint_every == 0 or state.phase_step == steps):
                save_checkpoint(run.out / "checkpoints", model, optimizer, scheduler, state, runtime,
                                cfg.keep_checkpoints)
    run.train_seconds += time.time() - loop_start
    dest = run.out if index == len(run.phases) - 1 else run.out / f"phase{index + 1}"
    export(model, objective, ImageConfig(size=phase.image_size), dest, runtime)
    run.skipped += dataset.bad.total


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run the pretraining described by `cfg`; returns a summary (also written to `summary.json`)."""
    phases = resolve_phases(cfg)
    if not Path(cfg.tokenizer).is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {cfg.tokenizer}")
    runtime = start(cfg.strategy, pick_device(cfg.device))
    try:
        return _pretrain(cfg, phases, runtime)
    finally:
        finish(runtime)


def _pretrain(cfg: PretrainConfig, phases: list[Phase], runtime: Runtime) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resume = find_checkpoint(cfg.resume, out / "checkpoints") if cfg.resume else None
    if resume is not None:
        rewind(out / "checkpoints", resume, runtime)
    state = read_state(resume) if resume is not None else TrainerState()
    if state.phase >= len(phases):
        raise ValueError(f"checkpoint {resume} is in phase {state.phase + 1}, but this run has {len(phases)}")
    history, metrics = _open_metrics(out, state.step) if runtime.is_main else ([], None)
    run = _Run(cfg, phases, runtime, AutoTokenizer.from_pretrained(cfg.tokenizer), out, history, metrics)
    start_time = time.time()
    try:
        for index in range(state.phase, len(phases)):
            _train_phase(run, index, state, resume if index == state.phase else None)
    finally:
        if metrics is not None:
            metrics.close()
    elapsed = time.time() - start_time
    losses = [r["loss"] for r in run.history]
    summary = {
        "objective": cfg.objective, "steps": state.step, "samples": state.samples,
        "first_loss": losses[0] if losses else math.nan, "final_loss": losses[-1] if losses else math.nan,
        "seconds": round(elapsed, 1), "samples_per_second": round(run.samples_run / max(run.train_seconds, 1e-9), 1),
        "skipped_samples": sum_over_ranks(run.skipped, runtime), "strategy": runtime.strategy,
        "world_size": runtime.world_size, "resumed_from": None if resume is None else str(resume),
        "encoder": str(out / "encoder"),
    }
    if runtime.device.type == "cuda":
        summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(runtime.device) / 2**30, 2)
    if runtime.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
