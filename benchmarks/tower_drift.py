"""How far pretraining moved a vision tower from its initialisation.

`mllm pretrain` seeds the objective's build (`seed`), so its starting weights can be rebuilt from the run's
resolved config (`RUN/config.yaml`, or the `pretrain` section of a demo's, for `DEMO/pretrain`). For each run
this reports, over the tower's weight matrices, the relative distance ||W - W0|| / ||W0|| (Frobenius, pooled
over matrices) and the same for the rest (the caption decoder): how much of the run's learning went into the
encoder. A tower trained with `optim.encoder_lr_scale` < 1 moves less. The VLM's random-encoder control builds
its tower from the same seed, so it is exactly W0: a drift is the whole difference between the two towers.

    python benchmarks/tower_drift.py runs/demo/pretrain runs/enc_a [--out drift.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser
from safetensors.torch import load_file

from mllm.encoders.objective_options import objective_config
from mllm.encoders.objectives import OBJECTIVES
from mllm.train_stages.pretrain_config import PretrainConfig


def drift(run: Path) -> dict[str, float]:
    """Relative distance from initialisation of the tower's and of the rest's weight matrices."""
    if (run / "config.yaml").is_file():
        raw = yaml.safe_load((run / "config.yaml").read_text())
    elif (run.parent / "config.yaml").is_file() and "pretrain" in (demo := yaml.safe_load(
            (run.parent / "config.yaml").read_text()) or {}):
        raw = demo["pretrain"]
    else:
        raise FileNotFoundError(f"{run}: neither its config.yaml nor a demo's config.yaml with a `pretrain` "
                                "section beside it")
    parser = ArgumentParser()
    parser.add_class_arguments(PretrainConfig, "cfg")
    cfg = parser.instantiate(parser.parse_object({"cfg": raw})).cfg
    if cfg.phases:
        raise ValueError(f"{run}: a run of several phases starts its later phases from the earlier ones")
    trained = load_file(str(run / "objective.safetensors"))
    vocab = next(v.shape[0] for k, v in trained.items() if k.endswith("token_embedding.weight"))
    torch.manual_seed(cfg.seed)  # as the pretraining loop seeds the build of its first phase (pad_id: loss only)
    objective = OBJECTIVES.get(cfg.objective)(objective_config(cfg.objective, cfg.model), vocab_size=vocab,
                                              pad_id=0)
    tower = {id(p) for p in objective.encoder.parameters()}  # the objective's stated tower, as the optimizer's
    sums = {"tower": [0.0, 0.0], "rest": [0.0, 0.0]}
    for name, start in objective.named_parameters():
        if start.ndim < 2 or name not in trained:
            continue
        part = sums["tower" if id(start) in tower else "rest"]
        part[0] += float((trained[name] - start.detach()).pow(2).sum())
        part[1] += float(start.detach().pow(2).sum())
    return {part: round((moved / norm) ** 0.5, 4) for part, (moved, norm) in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+",
                        help="pretraining run folders (config.yaml, objective.safetensors)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = {str(run): drift(run) for run in args.runs}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
