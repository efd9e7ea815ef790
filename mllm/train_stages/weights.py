"""The portable weights of `mllm pretrain`: the export written at the end of every phase, and `init`.

An export is `objective.safetensors` (the whole objective: encoder, caption decoder, any text tower) plus
`encoder/` (the ViT alone with open_clip key names and its preprocessing, what the VLM stages read). A run
can start from either: a run folder or its `objective.safetensors` loads every parameter, an exported
encoder folder loads the ViT only. Buffers are never loaded: the only ones are the fixed 2-D sin-cos position
tables, rebuilt for the new run's grid, which is what lets a phase change the image size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from mllm.data.images import ImageConfig
from mllm.encoders.objectives import PretrainObjective
from mllm.encoders.tower import save_encoder
from mllm.encoders.vit import VisionTransformer, load_open_clip_state_dict
from mllm.train_stages.distributed import Runtime, barrier

log = logging.getLogger(__name__)

OBJECTIVE_FILE = "objective.safetensors"


def _encoder_prefix(objective: PretrainObjective) -> str:
    return next(name for name, module in objective.named_modules() if module is objective.encoder)


def _write_export(objective: PretrainObjective, state: dict[str, Tensor], image: ImageConfig, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{OBJECTIVE_FILE}.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, dest / OBJECTIVE_FILE)  # a half-written file never carries the name the next phase reads
    prefix = _encoder_prefix(objective) + "."
    vision = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    # The gathered tensors become the ViT's own: nothing is allocated or initialised twice.
    with torch.device("meta"):
        vit = VisionTransformer(objective.encoder.config, out_dim=vision["proj"].shape[1] if "proj" in vision else None)
    vit.load_state_dict(vision, assign=True)
    save_encoder(vit, image, dest / "encoder")


def export(model: nn.Module, objective: PretrainObjective, image: ImageConfig, dest: Path, runtime: Runtime) -> None:
    """Gather the full weights (a collective under FSDP) and write them from rank 0 into `dest`."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if runtime.is_main:
        _write_export(objective, state, image, dest)
    barrier(runtime)


def load_init(objective: PretrainObjective, path: Path) -> None:
    """Load the weights a run starts from into `objective` (built, not yet wrapped); see the module doc."""
    file = path / OBJECTIVE_FILE if path.is_dir() else path
    if path.is_dir() and not file.is_file() and (path / "model.safetensors").is_file():
        load_open_clip_state_dict(objective.encoder, load_file(str(path / "model.safetensors")))
        log.info("encoder initialised from %s (the rest of the objective starts fresh)", path)
        return
    if not file.is_file():
        raise FileNotFoundError(f"init weights not found: {path} (expected {OBJECTIVE_FILE}, a run folder "
                                "holding it, or an exported encoder folder)")
    params = dict(objective.named_parameters())
    buffers = {name for name, _ in objective.named_buffers()}
    weights = {k: v for k, v in load_file(str(file)).items() if k not in buffers}
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    misshaped = [f"{k}: {tuple(weights[k].shape)} vs {tuple(params[k].shape)}"
                 for k in sorted(set(weights) & set(params)) if weights[k].shape != params[k].shape]
    if missing or unexpected or misshaped:
        problems = [f"{label}: {', '.join(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
        raise ValueError(f"{file} does not fit this objective (another objective or size?); {' | '.join(problems)}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    log.info("objective initialised from %s", file)
