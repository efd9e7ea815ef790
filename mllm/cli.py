"""The `mllm` console script: one subcommand per job, each configured by a typed dataclass.

Every subcommand takes `--config FILE.yaml` plus dotted overrides of any field (`--optim.base_lr 1e-3`),
parsed by jsonargparse, and writes the resolved configuration to `config.yaml` in its output folder (when it
has one). Option names may be written with dashes (`--keep-ratio`); a boolean field whose metadata has
`flag` is a switch (`--json`, `--no_json`).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

from mllm.logging_utils import is_main_process, setup_logging, summary

log = logging.getLogger("mllm")


def _world() -> tuple[type, Callable[[Any], Any]]:
    from mllm.world.build import WorldConfig, build_world

    def run(cfg: WorldConfig) -> None:
        manifest = build_world(cfg)
        rows = sum(manifest["benchmark_rows"].values())
        summary(f"world: {manifest['train_images']} training images, {rows} benchmark rows -> {cfg.out}")

    return WorldConfig, run


def _pretrain() -> tuple[type, Callable[[Any], Any]]:
    from mllm.train_stages.pretrain import PretrainConfig, pretrain

    def run(cfg: PretrainConfig) -> None:
        s = pretrain(cfg)
        summary(f"pretrain: {s['steps']} steps, loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}, "
                f"{s['samples_per_second']} samples/s, {s['skipped_samples']} bad samples skipped; "
                f"encoder -> {s['encoder']}")

    return PretrainConfig, run


def _pretrain_lm() -> tuple[type, Callable[[Any], Any]]:
    from mllm.train_stages.language import LanguageConfig, pretrain_language

    def run(cfg: LanguageConfig) -> None:
        s = pretrain_language(cfg)
        summary(f"pretrain-lm: {s['steps']} steps, loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}; "
                f"model -> {s['model']}")

    return LanguageConfig, run


def _loss(value: float | None) -> str:
    """A logged loss for a summary line; a stage shorter than one logging interval has none."""
    return "n/a" if value is None else f"{value:.3f}"


def _train() -> tuple[type, Callable[[Any], Any]]:
    from mllm.train_stages.stages import TrainConfig
    from mllm.train_stages.vlm_trainer import train

    def run(cfg: TrainConfig) -> None:
        s = train(cfg)
        stages = "; ".join(f"{x['stage']} loss {_loss(x['first_loss'])} -> {_loss(x['final_loss'])}"
                           for x in s["stages"])
        summary(f"train: {stages}; model -> {s['model']}")

    return TrainConfig, run


def _eval_run() -> tuple[type, Callable[[Any], Any]]:
    from mllm.eval.runner import EvalConfig, evaluate

    def run(cfg: EvalConfig) -> None:
        results = evaluate(cfg)
        print((Path(cfg.out) / "results.md").read_text(), end="")
        summary(f"eval run: mean headline {results['mean']:.1f} over {len(results['benchmarks'])} benchmarks -> "
                f"{cfg.out}/results.json")

    return EvalConfig, run


def _eval_score() -> tuple[type, Callable[[Any], Any]]:
    import json

    from mllm.eval.score import ScoreConfig, score_files

    def run(cfg: ScoreConfig) -> None:
        print(json.dumps(score_files(cfg)["metrics"]), flush=True)  # stdout holds this one JSON object only

    return ScoreConfig, run


def _leaderboard() -> tuple[type, Callable[[Any], Any]]:
    from mllm.eval.leaderboard import LeaderboardConfig, run_leaderboard

    return LeaderboardConfig, run_leaderboard


def _chat() -> tuple[type, Callable[[Any], Any]]:
    from mllm.serve.chat import ChatConfig, run_chat

    return ChatConfig, run_chat


def _serve() -> tuple[type, Callable[[Any], Any]]:
    from mllm.serve.server import ServeConfig, run_serve

    return ServeConfig, run_serve


def _flops() -> tuple[type, Callable[[Any], Any]]:
    from mllm.encoders.flops import FlopsConfig, run_flops

    return FlopsConfig, run_flops


def _export() -> tuple[type, Callable[[Any], Any]]:
    from mllm.interop import ExportConfig, export

    def run(cfg: ExportConfig) -> None:
        summary(f"export: {cfg.model} -> {export(cfg)} ({cfg.format})")

    return ExportConfig, run


def _demo() -> tuple[type, Callable[[Any], Any]]:
    from mllm.demo import DemoConfig, run_demo

    return DemoConfig, run_demo


Loader = Callable[[], tuple[type, Callable[[Any], Any]]]

# A command is one job (a loader of its config class and runner) or a group of sub-commands (`mllm eval run`).
COMMANDS: dict[str, tuple[str, Loader | dict[str, tuple[str, Loader]]]] = {
    "world": ("write the synthetic world (shards, stage data, mini-benchmarks, tokenizer)", _world),
    "pretrain": ("pretrain a vision encoder (OpenVision 2) on image-caption shards", _pretrain),
    "pretrain-lm": ("warm up a language model on a text corpus", _pretrain_lm),
    "train": ("run a VLM recipe's stages", _train),
    "eval": ("evaluate a VLM on benchmarks (run) or score an existing answer file (score)", {
        "run": ("answer the benchmarks with a saved VLM and score the answers", _eval_run),
        "score": ("score an answer file against a local benchmark copy; prints one JSON object", _eval_score),
    }),
    "leaderboard": ("our results.json files beside the OpenVision 2 paper's rows: Markdown, CSV and a PNG chart",
                    _leaderboard),
    "chat": ("talk to a saved VLM: one answer with --prompt, else a terminal chat", _chat),
    "serve": ("serve a saved VLM: a gradio chat demo at / and an OpenAI-compatible API at /v1", _serve),
    "flops": ("training FLOPs per image of an encoder-pretraining configuration, counted on the meta device",
              _flops),
    "export": ("export a VLM folder to another format (hf-llava: transformers' LLaVA, no custom code)", _export),
    "demo": ("world -> encoder pretraining -> VLM stages -> eval, against a random-encoder control", _demo),
}


def _to_dataclass(cls: type, ns: Namespace) -> Any:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def _job_parser(prog: str, help_text: str, config_cls: type) -> ArgumentParser:
    sub = ArgumentParser(prog=prog, description=help_text)
    sub.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    flags = [f for f in dataclasses.fields(config_cls) if f.metadata.get("flag")]
    positionals = [f for f in dataclasses.fields(config_cls) if f.metadata.get("positional")]
    sub.add_class_arguments(config_cls, None, skip={f.name for f in [*flags, *positionals]})
    for flag in flags:
        sub.add_argument(f"--{flag.name}", action=ActionYesNo, default=flag.default, help=flag.metadata["help"])
    for positional in positionals:  # a list field given as bare words: `mllm leaderboard a.json b.json`
        sub.add_argument(positional.name, type=str, nargs="+", help=positional.metadata["help"])
    return sub


def build_parser(
    only: str | None = None,
) -> tuple[ArgumentParser, dict[str, tuple[type, Callable[[Any], Any], ArgumentParser]]]:
    """The parser of every subcommand, or of `only` that one (which imports just its own modules: each
    torchrun process starts faster). `loaded` is keyed by the command's words ("train", "eval run")."""
    parser = ArgumentParser(prog="mllm", description="Build multimodal LLMs the LLaVA way.")
    subcommands = parser.add_subcommands(dest="command")
    loaded = {}
    for name, (help_text, job) in COMMANDS.items():
        if only is not None and name != only:
            continue
        if not isinstance(job, dict):
            config_cls, run = job()
            sub = _job_parser(f"mllm {name}", help_text, config_cls)
            subcommands.add_subcommand(name, sub, help=help_text)
            loaded[name] = (config_cls, run, sub)
            continue
        group = ArgumentParser(prog=f"mllm {name}", description=help_text)
        subcommands.add_subcommand(name, group, help=help_text)  # jsonargparse wants levels added top-down
        actions = group.add_subcommands(dest="action")
        for action, (action_help, load) in job.items():
            config_cls, run = load()
            sub = _job_parser(f"mllm {name} {action}", action_help, config_cls)
            actions.add_subcommand(action, sub, help=action_help)
            loaded[f"{name} {action}"] = (config_cls, run, sub)
    return parser, loaded


def _underscored(arg: str) -> str:
    """`--keep-ratio=0.5` -> `--keep_ratio=0.5`: option names take dashes or underscores; values are kept."""
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg.partition("=")
    return "--" + name[2:].replace("-", "_") + sep + value


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = [_underscored(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    command = next((arg for arg in args if not arg.startswith("-")), None)
    parser, loaded = build_parser(command if command in COMMANDS else None)
    parsed = parser.parse_args(args)
    name, raw = parsed.command, parsed[parsed.command]
    if isinstance(COMMANDS[name][1], dict):
        name, raw = f"{name} {raw.action}", raw[raw.action]
    config_cls, run, sub = loaded[name]
    raw.pop("config", None)
    try:
        cfg = _to_dataclass(config_cls, sub.instantiate(raw))
        if getattr(cfg, "out", ""):  # an optional --out left empty writes nothing
            out = Path(cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            if is_main_process():  # under torchrun every rank parses the same options; one writes them
                (out / "config.yaml").write_text(sub.dump(raw))
        run(cfg)
    except (FileNotFoundError, ValueError, KeyError) as err:
        log.error("%s", err)
        raise SystemExit(f"mllm {name}: error: {err}") from None


if __name__ == "__main__":
    main()
