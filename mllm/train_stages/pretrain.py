"""`mllm pretrain`: train a vision encoder with a pretraining objective on image-caption shards.

The schedule is OpenVision's: AdamW (betas 0.9/0.95) with weight decay on weight matrices only, peak
LR = base_lr x batch / 256, linear warm-up then cosine decay to zero, the budget counted in samples seen.
The objective is `ov2` (OpenVision 2), `ov1` (OpenVision) or `cappa` (CapPa); `model` holds the options of
all three and only those of the chosen one may differ from their defaults. The run folder receives the
exported encoder (`encoder/`, open_clip key names), the whole objective (`objective.safetensors`, decoder
and any text tower included) and `metrics.jsonl`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from mllm.data.images import ImageConfig
from mllm.data.shards import CaptionShards, ShardConfig
from mllm.encoders.objective_options import ModelOptions, objective_config
from mllm.encoders.objectives import OBJECTIVES, PretrainObjective
from mllm.encoders.tower import save_encoder

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    base_lr: float = 8e-6  # peak LR = base_lr * batch / 256
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.2
    warmup_samples: int = 51_200_000


@dataclass
class PretrainConfig:
    """Options of `mllm pretrain`."""

    out: str = "runs/pretrain"
    objective: str = "ov2"  # ov2, ov1 or cappa
    model: ModelOptions = field(default_factory=ModelOptions)
    tokenizer: str = "runs/world/tokenizer"
    data: ShardConfig = field(default_factory=ShardConfig)
    batch_size: int = 256
    samples: int = 12_800_000
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    log_every: int = 20
    num_workers: int = 0
    device: str = "auto"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def caption_tokenizer(tokenizer: Any, max_len: int) -> Callable[[str], torch.Tensor]:
    """Caption -> `[bos] w1..wn [eos]` ids, truncated to `max_len` (eos kept)."""
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the caption tokenizer needs bos and eos tokens")

    def tokenize(caption: str) -> torch.Tensor:
        ids = tokenizer(caption, add_special_tokens=False)["input_ids"][: max_len - 2]
        return torch.tensor([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id])

    return tokenize


def text_row_tokenizer(tokenizer: Any, length: int) -> Callable[[str], torch.Tensor]:
    """Text -> exactly `length` ids `[bos] w1..wn [eos] pad... [pool]` for a text encoder that pools its last
    position; the pooling token is the tokenizer's cls token, or eos when it has none."""
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("the text-encoder tokenizer needs bos, eos and pad tokens")
    pool = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.eos_token_id

    def tokenize(text: str) -> torch.Tensor:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: length - 3]
        row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
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
    groups = [
        {"params": [p for n, p in named if n not in skip], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if n in skip], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run the pretraining described by `cfg`; returns a summary (also written to `summary.json`)."""
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(cfg.tokenizer).is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {cfg.tokenizer}")
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    model_cfg = objective_config(cfg.objective, cfg.model)
    objective = OBJECTIVES.get(cfg.objective)(model_cfg, vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id)
    objective.to(device).train()
    image = ImageConfig(size=model_cfg.image_size)
    text_length = objective.text_length()
    dataset = CaptionShards(
        cfg.data, image, caption_tokenizer(tokenizer, model_cfg.max_text_len), cfg.seed,
        text_tokenize=None if text_length is None else text_row_tokenizer(tokenizer, text_length),
    )
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                        collate_fn=lambda b: pad_captions(b, tokenizer.pad_token_id))
    steps = math.ceil(cfg.samples / cfg.batch_size)
    lr = cfg.optim.base_lr * cfg.batch_size / 256
    optimizer = build_optimizer(objective, cfg.optim, lr)
    warmup = min(steps, math.ceil(cfg.optim.warmup_samples / cfg.batch_size))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    log.info("pretraining %s for %d steps of %d (peak lr %.3g, warm-up %d steps) on %s",
             cfg.objective, steps, cfg.batch_size, lr, warmup, device)
    history: list[dict[str, float]] = []
    start = time.time()
    batches = iter(loader)
    with open(out / "metrics.jsonl", "w") as metrics_file, tqdm(total=steps, desc="pretrain", unit="step") as bar:
        for step in range(1, steps + 1):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            logs = objective(batch)
            optimizer.zero_grad(set_to_none=True)
            logs["loss"].backward()
            optimizer.step()
            scheduler.step()
            bar.update()
            if step % cfg.log_every == 0 or step in (1, steps):
                record = {"step": step, "samples": step * cfg.batch_size, "lr": scheduler.get_last_lr()[0],
                          **{k: v.item() for k, v in logs.items()}}
                history.append(record)
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                bar.set_postfix(loss=f"{record['loss']:.3f}")
    elapsed = time.time() - start
    save_encoder(objective.encoder, image, out / "encoder")
    save_file({k: v.contiguous() for k, v in objective.state_dict().items()}, str(out / "objective.safetensors"))
    summary = {
        "objective": cfg.objective, "steps": steps, "samples": steps * cfg.batch_size,
        "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"], "seconds": round(elapsed, 1),
        "samples_per_second": round(steps * cfg.batch_size / elapsed, 1), "skipped_samples": dataset.bad.total,
        "encoder": str(out / "encoder"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
