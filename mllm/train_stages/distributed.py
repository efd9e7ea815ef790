"""How `mllm pretrain` runs across processes: one process, DDP or FSDP2, and the per-block options.

`strategy: auto` picks DDP under torchrun with more than one process and a single process otherwise. The
process group uses NCCL on CUDA and gloo on CPU, and reads torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). FSDP2 (`fully_shard`) shards every transformer block and then the
root, so a block's parameters are gathered only while it runs. Activation checkpointing and `torch.compile`
also work per block: the blocks hold nearly all the FLOPs and activations, and wrapping at block level keeps
FSDP's gather and reshard hooks outside the recomputed and compiled regions.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from mllm.train_stages.pretrain_config import STRATEGIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Where this process sits: the resolved strategy, its device, its rank among `world_size`."""

    strategy: str
    device: torch.device
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this run created the process group, so it also destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(strategy: str, device: torch.device) -> Runtime:
    """Resolve `strategy` against the launch environment and join the process group when distributed."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy == "auto":
        strategy = "ddp" if launched > 1 else "single"
    if strategy == "single":
        if launched > 1:
            raise ValueError(f"strategy 'single' cannot run in {launched} processes; use ddp or fsdp")
        return Runtime("single", device)
    if "RANK" not in os.environ and not dist.is_initialized():
        raise ValueError(f"strategy {strategy!r} needs torchrun's environment; launch with torchrun "
                         "(torchrun --nproc_per_node 1 ... runs one process)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    runtime = Runtime(strategy, device, dist.get_rank(), dist.get_world_size(), owns)
    log.info("%s over %d processes (%s)", strategy, runtime.world_size, dist.get_backend())
    return runtime


def finish(runtime: Runtime) -> None:
    if runtime.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        # DDP and FSDP keep the group alive in reference cycles; collecting them now joins gloo's worker threads
        # while the interpreter still runs. Left to its shutdown, a worker that needs the GIL aborts the process.
        gc.collect()


def barrier(runtime: Runtime) -> None:
    if runtime.world_size > 1:
        dist.barrier()


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """Every transformer block of an objective: the members of its ModuleLists (ViT, decoder, text tower)."""
    return [block for child in module.modules() if isinstance(child, nn.ModuleList) for block in child]


def _recomputed(block: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if block.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def prepare_blocks(module: nn.Module, grad_checkpointing: bool, compile_blocks: bool) -> None:
    """Activation checkpointing and/or torch.compile on each block, in place.

    Overriding the instance's `forward` (rather than wrapping the block in another module) keeps every
    parameter name, so state dicts, checkpoints and exports read the same with or without these options.
    """
    for block in transformer_blocks(module):
        if grad_checkpointing:
            block.forward = _recomputed(block, block.forward)
        if compile_blocks:
            block.compile()


def wrap(objective: nn.Module, runtime: Runtime, precision: str) -> nn.Module:
    """The module the loop calls: the objective itself (single, FSDP2 shards it in place) or its DDP wrapper."""
    if runtime.strategy == "ddp":
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return DistributedDataParallel(objective, device_ids=device_ids)
    if runtime.strategy == "fsdp":
        mesh = init_device_mesh(runtime.device.type, (runtime.world_size,))
        # bf16 gathers halve the traffic; gradients are reduced in fp32 so the sharded fp32 master weights
        # receive full-precision updates.
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if precision == "bf16" else MixedPrecisionPolicy())
        for block in transformer_blocks(objective):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        # FSDP2 cannot shard 0-dim parameters (ov1's logit_scale): they stay whole on every rank, and their
        # gradients are averaged over the ranks as soon as they are complete, as DDP would do.
        scalars = {param for param in objective.parameters() if param.ndim == 0}
        fully_shard(objective, mesh=mesh, mp_policy=policy, ignored_params=scalars or None)
        for param in scalars:
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(_average_grad)
    return objective


def _average_grad(param: Tensor) -> None:
    if param.grad is not None:
        dist.all_reduce(param.grad)
        param.grad /= dist.get_world_size()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mean_over_ranks(values: dict[str, Tensor], runtime: Runtime) -> dict[str, float]:
    """Scalar logs averaged over every rank's batch (one all-reduce for all of them)."""
    stacked = torch.stack([value.detach().float().reshape(()) for value in values.values()])
    if runtime.world_size > 1:
        dist.all_reduce(stacked)
        stacked /= runtime.world_size
    return dict(zip(values, stacked.tolist(), strict=True))


def sum_over_ranks(count: int, runtime: Runtime) -> int:
    if runtime.world_size == 1:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=runtime.device)
    dist.all_reduce(total)
    return int(total.item())
