"""`mllm demo`: the whole chain on the synthetic world, with a control.

world -> OpenVision 2 encoder pretraining -> language-model warm-up (on text and on scene sketches, which
teach a from-scratch LM to look up what its image positions hold) -> the LLaVA-1.5 recipe (align, then
instruct) twice: on the pretrained encoder and on a randomly initialised frozen encoder of the same
architecture with the same stage budget -> the eight mini-benchmarks for both. The two VLMs train at once,
each on half the CPU threads, since models this small keep one core busier than two (`--parallel false`
runs them in turn). `results.json` holds `{"ov2": {...}, "random_encoder": {...}}` with per-benchmark
metrics, headline, chance level and the mean of the eight headline metrics (0-100, MME normalised by its
maximum).
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mllm.eval.runner import EvalConfig, evaluate
from mllm.logging_utils import setup_logging, summary
from mllm.train_stages.language import LanguageConfig, pretrain_language
from mllm.train_stages.pretrain import PretrainConfig, pretrain
from mllm.train_stages.stages import TrainConfig
from mllm.train_stages.vlm_trainer import train
from mllm.world.build import WorldConfig, build_world

log = logging.getLogger(__name__)

VARIANTS = {"ov2": False, "random_encoder": True}  # name -> random_init


@dataclass
class DemoConfig:
    """Options of `mllm demo`. Output paths of the parts are set under `out`; relative stage data paths
    in `train.stages` are read relative to the world folder."""

    out: str = "runs/demo"
    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: bool = True  # train and evaluate the two VLMs in two processes at once


def vlm_recipe(cfg: DemoConfig, world: Path, encoder: Path, random_init: bool, lm: Path,
               out: Path) -> tuple[TrainConfig, EvalConfig]:
    """The demo's VLM stages on `encoder` and `lm`, with their data in `world`, writing to `out`, and the
    evaluation of their result on the world's benchmarks (its `model` is set once training has run)."""
    recipe = copy.deepcopy(cfg.train)
    recipe.out = str(out)
    recipe.encoder.path, recipe.encoder.random_init = str(encoder), random_init
    recipe.llm.path = recipe.llm.tokenizer = str(lm)
    recipe.data_root = str(world)
    ev = copy.deepcopy(cfg.eval)
    ev.data, ev.out = str(world / "benchmarks"), str(out / "eval")
    return recipe, ev


def side_by_side(results: dict[str, dict[str, Any]]) -> str:
    names = [k for k in results["ov2"] if k != "mean"]
    lines = ["| benchmark | metric | OV2 encoder | random encoder | chance |", "|---|---|---:|---:|---:|"]
    for name in names:
        a, b = results["ov2"][name], results["random_encoder"][name]
        lines.append(f"| {name} | {a['headline_metric']} | {a['headline']:.1f} | {b['headline']:.1f} | "
                     f"{a['chance']:.1f} |")
    lines.append(f"| **mean** | | **{results['ov2']['mean']:.1f}** | **{results['random_encoder']['mean']:.1f}** | |")
    return "\n".join(lines) + "\n"


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    timings: dict[str, float] = {}
    begin = time.time()

    def timed(name: str, fn: Any, *args: Any) -> Any:
        start = time.time()
        result = fn(*args)
        timings[name] = round(time.time() - start, 1)
        log.info("demo: %s done in %.0f s", name, timings[name])
        return result

    world = out / "world"
    world_cfg = copy.deepcopy(cfg.world)
    world_cfg.out = str(world)
    timed("world", build_world, world_cfg)

    pre = copy.deepcopy(cfg.pretrain)
    pre.out, pre.tokenizer, pre.data.shards = str(out / "pretrain"), str(world / "tokenizer"), str(world / "shards")
    lang = copy.deepcopy(cfg.language)
    lang.out, lang.corpus = str(out / "lm"), str(world / "text" / "corpus.txt")
    lang.conversations = [str(world / "text" / "reading.json")]
    lang.llm.tokenizer = str(world / "tokenizer")
    if lang.sketch.steps:
        lang.sketch.world = str(world)
    timed("pretrain", pretrain, pre)

    timed("pretrain_lm", pretrain_language, lang)

    recipes = {variant: vlm_recipe(cfg, world, out / "pretrain" / "encoder", random_init, out / "lm" / "model",
                                   out / variant)
               for variant, random_init in VARIANTS.items()}
    start = time.time()
    if cfg.parallel:
        threads = max(1, torch.get_num_threads() // len(recipes))
        with ProcessPoolExecutor(len(recipes), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {v: pool.submit(train_and_evaluate, *r, threads, v != "ov2") for v, r in recipes.items()}
            outcomes = {v: f.result() for v, f in futures.items()}
    else:
        outcomes = {v: train_and_evaluate(*r) for v, r in recipes.items()}
    timings["vlms"] = round(time.time() - start, 1)
    log.info("demo: both VLMs trained and evaluated in %.0f s", timings["vlms"])
    results = {variant: scores for variant, (scores, _) in outcomes.items()}
    stage_times = {f"{step}_{variant}": t for variant, (_, ts) in outcomes.items() for step, t in ts.items()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = side_by_side(results)
    (out / "results.md").write_text(table)
    total = round(time.time() - begin, 1)
    (out / "timings.json").write_text(json.dumps({**timings, "total": total, "vlm_parts": stage_times}, indent=1))
    print(table, end="")
    above = sum(r["headline"] > r["chance"] for name, r in results["ov2"].items() if name != "mean")
    summary(f"demo: mean {results['ov2']['mean']:.1f} (OV2 encoder) vs {results['random_encoder']['mean']:.1f} "
            f"(random encoder); OV2 above chance on {above}/{len(results['ov2']) - 1} benchmarks; "
            f"{total / 60:.1f} min -> {out / 'results.json'}")
    return results


def train_and_evaluate(recipe: TrainConfig, ev: EvalConfig, threads: int = 0, quiet: bool = False
                       ) -> tuple[dict[str, Any], dict[str, float]]:
    """One variant's stages and benchmarks: its results entry and the seconds each part took. `threads` > 0
    pins torch's thread count (a worker process); `quiet` hides progress bars (the other worker shows them)."""
    if threads:
        setup_logging()
        torch.set_num_threads(threads)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
        recipe.progress = False
    start = time.time()
    trained = train(recipe)
    seconds = {"train": round(time.time() - start, 1)}
    ev.model = trained["model"]
    start = time.time()
    scores = evaluate(ev)
    seconds["eval"] = round(time.time() - start, 1)
    entry: dict[str, Any] = {
        name: {**r["metrics"], "headline": r["headline"], "headline_metric": r["headline_metric"],
               "chance": r["chance"]} for name, r in scores["benchmarks"].items()
    }
    entry["mean"] = scores["mean"]
    return entry, seconds
