"""Resumable training state of `mllm pretrain`, written atomically and read back by `--resume`.

Layout under `<out>/checkpoints/`:

    step-00000100/     one complete checkpoint
      model_optim/     model and optimizer through torch.distributed.checkpoint: each rank writes its part
                       (its shards under FSDP), and any strategy can read it back
      trainer.json     where the run stands (`TrainerState`: step, phase, steps done in the phase, samples
                       seen, the LR scheduler's state)
      rng-<rank>.pt    each rank's torch (CPU and its GPU) and Python RNG states
    latest             the name of the newest complete checkpoint

A checkpoint is assembled in a `.tmp-` folder and renamed into place once every rank has written its part;
`latest` is replaced after that, so a crash at any moment leaves the previous `latest` whole. Only the newest
`keep` checkpoints stay.

The data position is `phase_step`: how many batches each rank has drawn from the current phase's stream.
The shard stream cannot be positioned, so a resumed run rebuilds it with the same seed and skips that many
batches, which reproduces the sample order exactly at the cost of decoding those batches again (hours at
paper scale: `replay_on_resume: false` then starts a fresh stream instead). With the same number of processes
and loader workers, a resumed run repeats an uninterrupted one exactly on CPU; another number of processes
may load the checkpoint (keeping the global batch), but its data order and random streams differ. Every rank
must see the checkpoint folder (a shared filesystem on a cluster).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim.lr_scheduler import LRScheduler

from mllm.train_stages.distributed import Runtime, barrier

log = logging.getLogger(__name__)

LATEST = "latest"


@dataclass
class TrainerState:
    """Progress of a run; `step` and `samples` count every phase, `phase_step` only the current one."""

    step: int = 0
    phase: int = 0
    phase_step: int = 0
    samples: int = 0
    global_batch: int = 0  # of the current phase: a resumed run must use the same
    world_size: int = 1
    scheduler: dict[str, Any] = field(default_factory=dict)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _rng_state(device: torch.device) -> dict[str, Any]:
    # Only this rank's own GPU: touching the others would open a CUDA context on each of them.
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
    }


@contextmanager
def _single_process_quietly() -> Iterator[None]:
    # Without a process group DCP reads and writes in this process, as meant; torch warns on every call.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        yield


def _step_of(folder: Path) -> int:
    return int(folder.name.removeprefix("step-"))


def _prune(root: Path, current: Path, keep: int) -> None:
    """Drop all but the newest `keep` checkpoints (never `current`) and leftovers of interrupted saves."""
    finished = sorted((p for p in root.glob("step-*") if p.is_dir()), key=_step_of)
    for old in finished[:-keep]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def save_checkpoint(root: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler,
                    state: TrainerState, runtime: Runtime, keep: int) -> Path:
    """Write `step-N` (all ranks take part), then point `latest` at it; returns the folder."""
    name = f"step-{state.step:08d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if runtime.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(runtime)
    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_quietly():
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / "model_optim",
                 no_dist=not dist.is_initialized())
    torch.save(_rng_state(runtime.device), tmp / f"rng-{runtime.rank}.pt")
    barrier(runtime)
    if runtime.is_main:
        state.scheduler = scheduler.state_dict()
        _write_atomic(tmp / "trainer.json", json.dumps(asdict(state), indent=1))
        os.replace(tmp, final)  # `rewind` leaves no later checkpoint, so nothing is in the way
        _write_atomic(root / LATEST, name + "\n")
        _prune(root, final, keep)
        log.info("checkpoint %s", final)
    barrier(runtime)
    return final


def find_checkpoint(spec: str, root: Path) -> Path | None:
    """The checkpoint `--resume` names: "latest" (None when the run has none yet, so the same command
    starts and restarts a job) or a `step-N` folder."""
    if spec == LATEST:
        pointer = root / LATEST
        if not pointer.is_file():
            log.info("no checkpoint under %s yet; starting from scratch", root)
            return None
        path = root / pointer.read_text().strip()
    else:
        path = Path(spec)
    if not (path / "trainer.json").is_file():
        raise FileNotFoundError(f"not a complete checkpoint (no trainer.json): {path}")
    return path


def rewind(root: Path, resume: Path, runtime: Runtime) -> None:
    """Before a run continues from `resume`, drop the checkpoints of `root` after it (an abandoned future
    that later saves would otherwise collide with). `latest` moves back first, so it never names a missing
    checkpoint; resuming another run's checkpoint into a folder with later checkpoints of its own is refused."""
    step = read_state(resume).step
    later = [p for p in root.glob("step-*") if p.is_dir() and _step_of(p) > step]
    if not later:
        return
    if resume.resolve().parent != root.resolve():
        raise ValueError(f"{root} already holds checkpoints after step {step}; resume one of them, or resume "
                         f"{resume} into another output folder")
    barrier(runtime)  # every rank has looked before rank 0 deletes
    if runtime.is_main:
        _write_atomic(root / LATEST, resume.name + "\n")
        for folder in later:
            shutil.rmtree(folder)
        log.info("rewound %s to %s", root, resume.name)
    barrier(runtime)


def read_state(path: Path) -> TrainerState:
    return TrainerState(**json.loads((path / "trainer.json").read_text()))


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> None:
    """Model, optimizer and scheduler state of `path` into a run built for the same phase (collective)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    loaded = {"model": model_state, "optimizer": optim_state}
    with _single_process_quietly():
        dcp.load(loaded, checkpoint_id=path / "model_optim", no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
    scheduler.load_state_dict(read_state(path).scheduler)


def restore_rng(path: Path, runtime: Runtime) -> None:
    """This rank's RNG states as saved; with another world size the streams cannot match, so they are kept."""
    file = path / f"rng-{runtime.rank}.pt"
    if read_state(path).world_size != runtime.world_size or not file.is_file():
        log.warning("checkpoint %s was written by another number of processes: random streams differ from "
                    "an uninterrupted run", path)
        return
    saved = torch.load(file, weights_only=True)
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda"], runtime.device)
    random.setstate(saved["python"])
