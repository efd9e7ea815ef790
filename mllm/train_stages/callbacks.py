"""Trainer callbacks of `mllm train`: throughput and memory in the log history, and complete-checkpoint markers.

The Trainer counts the non-pad tokens it feeds (`include_num_input_tokens_seen="non_padding"`, summed over
processes); `ThroughputCallback` turns that count into tokens/s between logs, adds samples/s and this
process's peak memory, and writes them into the same log entry as the loss, before the reporting
integrations (TensorBoard, W&B) read it.

The Trainer writes a checkpoint folder in place, file by file, so a crash can leave a folder that looks like
a checkpoint but is not one. `CompleteMarkerCallback` writes a marker once every process has finished its
part, and resuming only ever picks a folder with the marker.
"""

from __future__ import annotations

import logging
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

log = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete"


def peak_memory_mb() -> float:
    """Peak accelerator memory of this process where there is one, else its peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class ThroughputCallback(TrainerCallback):
    """Adds tokens_per_second, samples_per_second and peak_memory_mb to every loss log entry."""

    def __init__(self) -> None:
        self.start_time = self.last_time = 0.0
        self.start_tokens = self.last_tokens = 0
        self.start_step = self.last_step = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self.start_time = self.last_time = time.perf_counter()
        self.start_tokens = self.last_tokens = state.num_input_tokens_seen
        self.start_step = self.last_step = state.global_step

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is None or "loss" not in logs:
            return
        now = time.perf_counter()
        seconds = max(now - self.last_time, 1e-9)
        samples = (state.global_step - self.last_step) * self.global_batch(args)
        metrics = {
            "tokens_per_second": round((state.num_input_tokens_seen - self.last_tokens) / seconds, 1),
            "samples_per_second": round(samples / seconds, 2),
            "peak_memory_mb": round(peak_memory_mb(), 1),
        }
        self.last_time, self.last_tokens, self.last_step = now, state.num_input_tokens_seen, state.global_step
        logs.update(metrics)
        # The Trainer appended its copy of `logs` just before calling the callbacks.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    @staticmethod
    def global_batch(args: TrainingArguments) -> int:
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size

    def totals(self, state: TrainerState) -> dict[str, float]:
        """Throughput of this session of the stage (a resumed stage counts from the resume) and peak memory."""
        seconds = max(time.perf_counter() - self.start_time, 1e-9)
        return {
            "tokens_per_second": round((state.num_input_tokens_seen - self.start_tokens) / seconds, 1),
            "peak_memory_mb": round(peak_memory_mb(), 1),
        }


class CompleteMarkerCallback(TrainerCallback):
    """Marks a checkpoint folder complete once every process has written its share of it."""

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # other ranks write their RNG states (and sharded weights) into the same folder
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                (folder / COMPLETE_MARKER).touch()


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-"))


def complete_checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints in `folder`, oldest step first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
             if p.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-").isdigit() and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=checkpoint_step)


def remove_incomplete_checkpoints(folder: Path) -> None:
    """Delete checkpoint folders a crash left half-written, so neither resuming nor rotation meets them."""
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else []:
        if path.is_dir() and not (path / COMPLETE_MARKER).is_file():
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path)
