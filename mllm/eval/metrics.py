"""Benchmark scoring: one entry point for the eight benchmarks and two scoring protocols.

`score_benchmark` validates its inputs and dispatches to the per-benchmark scorers in
`mllm.eval.scorers_vqa` and `mllm.eval.scorers_choice`; `headline` picks the single number reported in
tables. Protocols:

- "default": lmms-eval 0.7.3's scoring, its lenient and strict parsing choices included.
- "llava": LLaVA-1.5's own eval scripts for GQA, POPE and ScienceQA-IMG; every other benchmark scores as
  under "default" (for TextVQA the LLaVA difference is the prompt, see `mllm.eval.prompts`).

All accuracy-like values are percentages (0-100). Metric keys per benchmark:

- textvqa: accuracy
- chartqa: relaxed_overall, relaxed_human, relaxed_augmented (a split without rows is omitted)
- ocrbench: correct, accuracy, score (1000 * correct / N), cat/<question_type> hit counts for those of
  the ten lmms-eval categories that occur (other question types count only in the totals)
- mme: acc/<cat>, acc_plus/<cat>, score/<cat>, perception, cognition, total, max_total
- seed: seed_all, seed_image, seed_video (a type without rows is omitted)
- sqa_img, gqa: accuracy
- pope: accuracy, precision, recall, f1, yes_ratio, the same as <category>/<metric>, and f1_mean ("llava")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mllm.eval.scorers_choice import score_mme, score_pope, score_seed, score_sqa_img
from mllm.eval.scorers_vqa import score_chartqa, score_gqa, score_ocrbench, score_textvqa

BENCHMARKS: tuple[str, ...] = ("textvqa", "chartqa", "ocrbench", "mme", "seed", "sqa_img", "gqa", "pope")
PROTOCOLS: tuple[str, ...] = ("default", "llava")

# The key `headline` reads. MME's headline is total / max_total on a 0-100 scale; POPE's is `f1_mean`
# when present (the "llava" protocol, the paper's mean over categories) and pooled `f1` otherwise.
HEADLINE_METRIC: dict[str, str] = {
    "textvqa": "accuracy",
    "chartqa": "relaxed_overall",
    "ocrbench": "accuracy",
    "mme": "total",
    "seed": "seed_image",
    "sqa_img": "accuracy",
    "gqa": "accuracy",
    "pope": "f1",
}

# Columns each scorer reads from every row (SEED's optional `data_type` defaults to "image").
_REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "textvqa": ("answers",),
    "chartqa": ("answer", "type"),
    "ocrbench": ("answer", "dataset", "question_type"),
    "mme": ("question_id", "answer", "category"),
    "seed": ("answer",),
    "sqa_img": ("answer",),
    "gqa": ("answer",),
    "pope": ("answer", "category"),
}


def check_benchmark(benchmark: str) -> None:
    """Raise ValueError unless `benchmark` is one of `BENCHMARKS`."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")


def check_protocol(protocol: str) -> None:
    """Raise ValueError unless `protocol` is one of `PROTOCOLS`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def _validate(benchmark: str, docs: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> None:
    """Check lengths, prediction types and required columns, naming the offending row."""
    if len(docs) != len(predictions):
        raise ValueError(f"{benchmark}: {len(docs)} docs but {len(predictions)} predictions")
    if not docs:
        raise ValueError(f"{benchmark}: nothing to score (empty docs)")
    for row, (doc, prediction) in enumerate(zip(docs, predictions, strict=True)):
        if not isinstance(prediction, str):
            raise ValueError(f"{benchmark}: prediction {row} is {type(prediction).__name__}, not str")
        for column in _REQUIRED_COLUMNS[benchmark]:
            if column not in doc:
                raise ValueError(f"{benchmark}: row {row} is missing column {column!r}")


def score_benchmark(
    benchmark: str,
    docs: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    protocol: str = "default",
) -> dict[str, float]:
    """Score raw model outputs against dataset rows; see the module docstring for the returned keys.

    `docs[i]` is one dataset row (lmms-eval columns, images not needed) and `predictions[i]` the raw
    model output for it. Raises ValueError for an unknown benchmark or protocol, mismatched lengths,
    empty input, a non-string prediction, or a row lacking a needed column or holding a bad value.
    """
    check_benchmark(benchmark)
    check_protocol(protocol)
    _validate(benchmark, docs, predictions)
    if benchmark == "textvqa":
        return score_textvqa(docs, predictions)
    if benchmark == "chartqa":
        return score_chartqa(docs, predictions)
    if benchmark == "ocrbench":
        return score_ocrbench(docs, predictions)
    if benchmark == "mme":
        return score_mme(docs, predictions)
    if benchmark == "seed":
        return score_seed(docs, predictions)
    if benchmark == "sqa_img":
        return score_sqa_img(docs, predictions, protocol)
    if benchmark == "gqa":
        return score_gqa(docs, predictions, protocol)
    return score_pope(docs, predictions, protocol)


def headline(benchmark: str, metrics: Mapping[str, float]) -> float:
    """The benchmark's single reported number on a 0-100 scale, taken from `score_benchmark` output."""
    check_benchmark(benchmark)
    if benchmark == "mme":
        if "total" not in metrics or not metrics.get("max_total"):
            raise ValueError("mme: metrics need 'total' and a positive 'max_total'")
        return 100.0 * metrics["total"] / metrics["max_total"]
    key = "f1_mean" if benchmark == "pope" and "f1_mean" in metrics else HEADLINE_METRIC[benchmark]
    if key not in metrics:
        raise ValueError(f"{benchmark}: metrics lack the headline key {key!r}")
    return float(metrics[key])
