"""OpenVision 2's two ablations in miniature: how many visual tokens feed the caption decoder, and which caption.

The paper keeps a random 35% of the visual tokens and trains on long synthetic captions (ReCap-DataComp's
`re_caption`); it reports that keeping all tokens costs more for no gain, and that short web alt-text makes a
weaker encoder. Here each variant pretrains an encoder exactly as `make demo` does but for the one setting
changed, then runs the demo's VLM recipe on it (same world, same warmed-up LM, same stages) and scores the
eight mini-benchmarks. Besides the benchmarks, which sit near chance for most families on the CPU budget (see
the README), each encoder gets the per-cell linear probe of `encoder_probe.py`, a finer read of what it holds.
Variants train two at a time, one torch thread each.

    make demo   # the world, the LM and the keep-0.35 dense-caption encoder are reused from runs/demo
    python benchmarks/ov2_ablation.py --demo runs/demo --out runs/ablation \
        --json benchmarks/results/ov2_ablation_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml
from encoder_probe import cell_features, objects, probe
from jsonargparse import ArgumentParser
from report import report, stamp

from mllm.demo import DemoConfig, train_and_evaluate, vlm_recipe
from mllm.train_stages.pretrain import pretrain
from mllm.world.scene import COLOURS, SHAPES, SIZES

# name -> (keep_ratio, caption_field); "keep0.35_dense" is the demo's own encoder.
ABLATIONS: dict[str, tuple[float, str]] = {
    "keep1.0_dense": (1.0, "txt"),
    "keep0.35_dense": (0.35, "txt"),
    "keep0.10_dense": (0.10, "txt"),
    "keep0.35_alt_text": (0.35, "json:org_caption"),
}
CLASSES = {"shape": len(SHAPES), "colour": len(COLOURS), "size": len(SIZES)}


def demo_config(demo: Path) -> DemoConfig:
    parser = ArgumentParser()
    parser.add_class_arguments(DemoConfig)
    raw = yaml.safe_load((demo / "config.yaml").read_text())
    return parser.instantiate_classes(parser.parse_object(raw))


def run_variant(name: str, demo: Path, out: Path, threads: int) -> dict[str, Any]:
    """Pretrain (unless it is the demo's own encoder), train the VLM, evaluate, probe the encoder."""
    torch.set_num_threads(threads)
    cfg = demo_config(demo)
    keep, field = ABLATIONS[name]
    world = demo / "world"
    if (keep, field) == (cfg.pretrain.model.keep_ratio, cfg.pretrain.data.caption_field):
        encoder = demo / "pretrain" / "encoder"
        pre_summary = json.loads((demo / "pretrain" / "summary.json").read_text())
    else:
        pre = copy.deepcopy(cfg.pretrain)
        pre.model.keep_ratio, pre.data.caption_field = keep, field
        pre.out, pre.tokenizer = str(out / name / "pretrain"), str(world / "tokenizer")
        pre.data.shards = str(world / "shards")
        pre_summary = pretrain(pre)
        encoder = Path(pre_summary["encoder"])
    recipe, ev = vlm_recipe(cfg, world, encoder, False, demo / "lm" / "model", out / name / "vlm")
    recipe.progress = False
    start = time.time()
    scores, _ = train_and_evaluate(recipe, ev)
    torch.manual_seed(0)
    images, cells, labels = objects(world, 2000)
    features = cell_features(encoder, False, images, cells, recipe.encoder.feature_layer)
    return {
        "keep_ratio": keep, "caption_field": field,
        "pretrain": {k: pre_summary[k] for k in ("steps", "final_loss", "seconds", "samples_per_second")},
        "vlm_seconds": round(time.time() - start, 1),
        "mean": round(scores["mean"], 2),
        "above_chance": sum(r["headline"] > r["chance"] for k, r in scores.items() if k != "mean"),
        "benchmarks": {k: round(r["headline"], 1) for k, r in scores.items() if k != "mean"},
        "cell_probe": {attr: probe(features, labels[attr], n) for attr, n in CLASSES.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"))
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--variants", default=",".join(ABLATIONS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(ABLATIONS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; expected some of {list(ABLATIONS)}")
    start = time.time()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {n: pool.submit(run_variant, n, args.demo, args.out, 1) for n in names}
        variants = {n: f.result() for n, f in futures.items()}
    chance = json.loads((args.demo / "results.json").read_text())["ov2"]
    report({**stamp(), "demo": str(args.demo), "seconds": round(time.time() - start, 1),
            "chance": {k: round(v["chance"], 1) for k, v in chance.items() if k != "mean"},
            "variants": variants}, args.json)


if __name__ == "__main__":
    main()
