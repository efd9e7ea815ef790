"""`mllm eval run`: greedy answers on benchmarks, scored as the reference evaluators score them.

Predictions are cached per benchmark in LLaVA's answer-file JSONL (`question_id`, `prompt`, `text`,
`model_id`), so an interrupted run resumes where it stopped. Results go to `results.json` (per benchmark:
metrics, headline, chance level, protocol, sample count, model, date) and `results.md`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mllm.data.conversation import encode_prompt
from mllm.data.templates import end_of_turn_ids
from mllm.eval.answer_files import question_ids, read_answer_file
from mllm.eval.benchmarks import chance_level, first_rows, load_rows, parse_benchmarks, row_image
from mllm.eval.metrics import HEADLINE_METRIC, check_protocol, headline, score_benchmark
from mllm.eval.prompts import MAX_NEW_TOKENS, build_prompt
from mllm.train_stages.pretrain import pick_device
from mllm.vlm import VisionLanguageModel

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Options of `mllm eval run`."""

    model: str = "runs/train/instruct/model"
    data: str = "runs/world/benchmarks"
    benchmarks: str = "all"
    out: str = "runs/eval"
    protocol: str = "default"
    batch_size: int = 32
    limit: int = 0  # evaluate the first N rows of each benchmark (0: all)
    device: str = "auto"


def _read_cache(path: Path) -> dict[tuple[str, str], str]:
    """Answers already written, by (question id, prompt): MME's two questions about an image share an id, and a
    run under another protocol asks another prompt. A torn last line (a crash mid-write) is answered again."""
    if not path.exists():
        return {}
    return {(record["question_id"], record.get("prompt", "")): record["text"]
            for record in read_answer_file(path, skip_torn=True)}


def _end_torn_line(path: Path) -> None:
    """Close a torn last line, so that the next answer starts a line of its own."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as file:
            file.seek(-1, 2)
            torn = file.read(1) != b"\n"
        if torn:
            with open(path, "a") as file:
                file.write("\n")


class Answerer:
    """Batched greedy generation for (image, prompt) pairs with a saved VLM."""

    def __init__(self, folder: Path, device: torch.device) -> None:
        model, tokenizer = VisionLanguageModel.from_pretrained(folder)
        self._bind(model.to(device).eval(), tokenizer, device)

    @classmethod
    def in_memory(cls, model: VisionLanguageModel, tokenizer: Any, device: torch.device) -> Answerer:
        """An answerer over a live model (evaluation during training): nothing is loaded, and the caller
        switches the model between eval() and train()."""
        answerer = cls.__new__(cls)
        answerer._bind(model, tokenizer, device)
        return answerer

    def _bind(self, model: VisionLanguageModel, tokenizer: Any, device: torch.device) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.stop_ids = end_of_turn_ids(tokenizer)

    @torch.no_grad()
    def answer(self, images: list[Any], prompts: list[str], max_new_tokens: int, **options: Any) -> list[str]:
        """One answer per (image, prompt); greedy unless `options` (do_sample, temperature, ...) say otherwise."""
        # AnyRes models get tiles, sizes and a per-image position count; fixed-size ones one tensor each.
        pixels, sizes, counts = self.model.preprocess_images(images)
        sequences = [encode_prompt(self.tokenizer, "<image>\n" + p, "chat", count)
                     for p, count in zip(prompts, counts, strict=True)]
        length = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (length - len(s)) + s for s in sequences], device=self.device)
        attention = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in sequences], device=self.device)
        sizes = None if sizes is None else sizes.to(self.device)
        out = self.model.generate(input_ids, attention, pixels.to(self.device), max_new_tokens, self.stop_ids, pad,
                                  image_sizes=sizes, **options)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]


def evaluate_benchmark(answerer: Answerer, name: str, cfg: EvalConfig, out: Path) -> dict[str, Any]:
    rows = first_rows(name, load_rows(Path(cfg.data), name), cfg.limit)
    docs = [{k: v for k, v in row.items() if k != "image"} for row in rows]
    prompts = [build_prompt(name, doc, cfg.protocol) for doc in docs]
    keys = list(zip(question_ids(rows), prompts, strict=True))
    cache_file = out / f"{name}.jsonl"
    done = _read_cache(cache_file)
    todo = [i for i, key in enumerate(keys) if key not in done]
    _end_torn_line(cache_file)
    with open(cache_file, "a") as cache, tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"eval {name}",
                                                unit="q") as bar:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            try:
                images = [row_image(rows[i]) for i in batch]
            except (OSError, ValueError) as err:
                raise ValueError(f"{name}: cannot read the image of a row in {cfg.data}: {err}") from err
            texts = answerer.answer(images, [prompts[i] for i in batch], MAX_NEW_TOKENS[name])
            for i, text in zip(batch, texts, strict=True):
                done[keys[i]] = text
                cache.write(json.dumps({"question_id": keys[i][0], "prompt": prompts[i], "text": text,
                                        "model_id": cfg.model}) + "\n")
            cache.flush()
            bar.update(len(batch))
    predictions = [done[key] for key in keys]
    return benchmark_result(name, docs, predictions, cfg.protocol, cfg.model)


def benchmark_result(name: str, docs: list[dict[str, Any]], predictions: list[str], protocol: str,
                     model: str) -> dict[str, Any]:
    """One benchmark's entry of `results.json`."""
    metrics = score_benchmark(name, docs, predictions, protocol)
    return {
        "metrics": metrics, "headline": headline(name, metrics), "headline_metric": HEADLINE_METRIC[name],
        "chance": chance_level(name, docs), "protocol": protocol, "samples": len(docs), "model": model,
        "date": dt.date.today().isoformat(),
    }


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| benchmark | headline metric | score | chance |", "|---|---|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['headline_metric']} | {r['headline']:.1f} | {r['chance']:.1f} |")
    mean = sum(r["headline"] for r in results.values()) / len(results)
    lines.append(f"| **mean** | | **{mean:.1f}** | |")
    return "\n".join(lines) + "\n"


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate `cfg.model` on the chosen benchmarks; returns what `results.json` holds."""
    check_protocol(cfg.protocol)
    names = parse_benchmarks(cfg.benchmarks)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    answerer = Answerer(Path(cfg.model), pick_device(cfg.device))
    results = {name: evaluate_benchmark(answerer, name, cfg, out) for name in names}
    summary = {"benchmarks": results, "mean": sum(r["headline"] for r in results.values()) / len(results)}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "results.md").write_text(markdown_table(results))
    return summary
