"""The demo's VLM stages and evaluation for one encoder, on a finished demo's world and LM.

`make demo` pretrains one encoder; comparing another (a pretraining knob, a longer run) under exactly the
demo's VLM recipe otherwise means rerunning the whole demo. This trains the stages of the demo's resolved
config (`DEMO/config.yaml`) on `--encoder` with its world and warmed-up LM, scores the eight benchmarks and
writes the results entry `mllm demo` would (`OUT/entry.json`).

    python benchmarks/demo_vlm.py --demo runs/demo --encoder runs/enc/encoder --out runs/demo_enc [--random_init]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from ov2_ablation import demo_config

from mllm.demo import train_and_evaluate, vlm_recipe
from mllm.logging_utils import setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished `mllm demo` folder (world, lm)")
    parser.add_argument("--encoder", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--random_init", action="store_true", help="the encoder's architecture, randomly initialised")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    setup_logging()
    torch.set_num_threads(args.threads)
    recipe, ev = vlm_recipe(demo_config(args.demo), args.demo / "world", args.encoder, args.random_init,
                            args.demo / "lm" / "model", args.out)
    recipe.progress = False
    entry, seconds = train_and_evaluate(recipe, ev)
    (args.out / "entry.json").write_text(json.dumps(entry, indent=1))
    headline = {name: round(r["headline"], 1) for name, r in entry.items() if name != "mean"}
    print(json.dumps({**headline, "mean": round(entry["mean"], 1), "seconds": seconds}))


if __name__ == "__main__":
    main()
