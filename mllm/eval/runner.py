"""`mllm eval`: greedy answers on benchmarks, scored as the reference evaluators score them.

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
from mllm.eval.benchmarks import chance_level, load_rows, parse_benchmarks, row_image
from mllm.eval.metrics import HEADLINE_METRIC, check_protocol, headline, score_benchmark
from mllm.eval.prompts import MAX_NEW_TOKENS, build_prompt
from mllm.train_stages.pretrain import pick_device
from mllm.vlm import VisionLanguageModel

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Options of `mllm eval`."""

    model: str = "runs/train/instruct/model"
    data: str = "runs/world/benchmarks"
    benchmarks: str = "all"
    out: str = "runs/eval"
    protocol: str = "default"
    batch_size: int = 32
    limit: int = 0  # evaluate the first N rows of each benchmark (0: all)
    device: str = "auto"


def _question_id(row: dict[str, Any], index: int) -> str:
    return str(row.get("question_id", index))


def _read_cache(path: Path) -> dict[str, str]:
    """Answers already written; a torn last line (a crash mid-write) is ignored and rewritten."""
    done: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                done[str(record["question_id"])] = record["text"]
            except (json.JSONDecodeError, KeyError):
                continue
    return done


class Answerer:
    """Batched greedy generation for (image, prompt) pairs with a saved VLM."""

    def __init__(self, folder: Path, device: torch.device) -> None:
        self.model, self.tokenizer = VisionLanguageModel.from_pretrained(folder)
        self.model.to(device).eval()
        self.device = device
        self.stop_ids = end_of_turn_ids(self.tokenizer)

    def answer(self, images: list[Any], prompts: list[str], max_new_tokens: int) -> list[str]:
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
                                  image_sizes=sizes)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]


def evaluate_benchmark(answerer: Answerer, name: str, cfg: EvalConfig, out: Path) -> dict[str, Any]:
    rows = load_rows(Path(cfg.data), name)
    if cfg.limit:
        rows = rows[: cfg.limit]
    docs = [{k: v for k, v in row.items() if k != "image"} for row in rows]
    prompts = [build_prompt(name, doc, cfg.protocol) for doc in docs]
    cache_file = out / f"{name}.jsonl"
    done = _read_cache(cache_file)
    todo = [i for i, row in enumerate(rows) if _question_id(row, i) not in done]
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
                qid = _question_id(rows[i], i)
                done[qid] = text
                cache.write(json.dumps({"question_id": qid, "prompt": prompts[i], "text": text,
                                        "model_id": cfg.model}) + "\n")
            cache.flush()
            bar.update(len(batch))
    predictions = [done[_question_id(row, i)] for i, row in enumerate(rows)]
    metrics = score_benchmark(name, docs, predictions, cfg.protocol)
    return {
        "metrics": metrics, "headline": headline(name, metrics), "headline_metric": HEADLINE_METRIC[name],
        "chance": chance_level(name, docs), "protocol": cfg.protocol, "samples": len(rows), "model": cfg.model,
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
