"""Scorers for the open-answer benchmarks: TextVQA, ChartQA, OCRBench and GQA.

Each ``score_*`` function takes rows and raw model outputs that `mllm.eval.metrics` has already
validated (same length, non-empty, required columns present) and returns percentages (0-100), except
OCRBench's counts. The per-item helpers are public so that tests and analysis code can call them.
Behaviour follows lmms-eval 0.7.3 (and LLaVA-1.5's scripts where a "llava" protocol exists); the
quirks that matter are named next to the code that reproduces them.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from mllm.eval.answer_normalize import normalize_vqa_answer

OCRBENCH_CATEGORIES: tuple[str, ...] = (
    "Regular Text Recognition",
    "Irregular Text Recognition",
    "Artistic Text Recognition",
    "Handwriting Recognition",
    "Digit String Recognition",
    "Non-Semantic Text Recognition",
    "Scene Text-centric VQA",
    "Doc-oriented VQA",
    "Key Information Extraction",
    "Handwritten Mathematical Expression Recognition",
)

# Full-width ASCII (U+FF01..U+FF5E) maps to ASCII by a fixed offset; the ideographic space to a space.
_FULLWIDTH_FOLD: dict[int, str] = {code: chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)}
_FULLWIDTH_FOLD[0x3000] = " "

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def as_text_list(value: Any, what: str, row: int) -> list[str]:
    """Return `value` as a list of strings: a lone string becomes a one-item list.

    Dataset rows from parquet or `datasets` may hold lists, tuples or numpy arrays; all are accepted.
    """
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise ValueError(f"row {row}: column {what!r} must be a string or a list of strings") from None
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"row {row}: column {what!r} must hold only strings")
    return items


def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1]: mean over the leave-one-out answer subsets of min(1, matches / 3).

    With ten human answers this is the official metric: 1, 2, 3 and >=4 matching humans give
    0.3, 0.6, 0.9 and 1.0.
    """
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(answer) for answer in answers]
    hits = sum(gt == pred for gt in gts)
    # Leaving answer i out removes one match exactly when answer i itself matched.
    per_subset = [min(1.0, (hits - (gt == pred)) / 3) for gt in gts]
    return sum(per_subset) / len(per_subset)


def score_textvqa(docs: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict[str, float]:
    """TextVQA: mean VQA soft accuracy over questions, in percent."""
    total = 0.0
    for row, (doc, prediction) in enumerate(zip(docs, predictions, strict=True)):
        answers = as_text_list(doc["answers"], "answers", row)
        if not answers:
            raise ValueError(f"textvqa: row {row} has an empty 'answers' list")
        total += vqa_soft_accuracy(prediction, answers)
    return {"accuracy": 100.0 * total / len(docs)}


def _chartqa_float(text: str) -> float | None:
    """Parse like the Qwen-VL / pix2struct helper: a trailing '%' divides by 100; failure gives None."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA relaxed match: within 5% when both parse as numbers, else case-insensitive equality.

    The numeric path needs a non-zero target (a zero target falls back to the string test, so "0.0" vs
    "0" is wrong) and Python's `float` syntax ("1,000" does not parse and is compared as a string;
    "$12" never matches "12"). The prediction is stripped of surrounding whitespace first.
    """
    prediction = prediction.strip()
    pred_value = _chartqa_float(prediction)
    target_value = _chartqa_float(target)
    if pred_value is not None and target_value:
        return abs(pred_value - target_value) / abs(target_value) <= max_relative_change
    return prediction.lower() == target.lower()


def score_chartqa(docs: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict[str, float]:
    """ChartQA: relaxed accuracy overall and per split (human / augmented), in percent."""
    splits: dict[str, list[float]] = {"relaxed_human": [], "relaxed_augmented": []}
    overall: list[float] = []
    for row, (doc, prediction) in enumerate(zip(docs, predictions, strict=True)):
        targets = as_text_list(doc["answer"], "answer", row)
        hit = float(any(relaxed_correctness(prediction, target) for target in targets))
        split = str(doc["type"])
        if split.startswith("human"):
            splits["relaxed_human"].append(hit)
        elif split.startswith("augmented"):
            splits["relaxed_augmented"].append(hit)
        else:
            raise ValueError(f"chartqa: row {row} has type {split!r}; expected 'human...' or 'augmented...'")
        overall.append(hit)
    metrics = {"relaxed_overall": 100.0 * sum(overall) / len(overall)}
    metrics.update({name: 100.0 * sum(hits) / len(hits) for name, hits in splits.items() if hits})
    return metrics


def _squeeze_spaces(text: str) -> str:
    """HME100k comparison form: newlines and spaces removed (LaTeX spacing is arbitrary)."""
    return text.strip().replace("\n", " ").replace(" ", "")


def ocrbench_hit(prediction: str, answers: Sequence[str], dataset: str) -> bool:
    """OCRBench: does any ground-truth answer occur as a substring of the prediction?

    HME100k (handwritten maths) compares case-sensitively with all spaces removed; every other source
    compares lowercased, full-width-folded text. Containment rewards long answers that mention the
    target, e.g. "The sign says STOP here" for "STOP".
    """
    if dataset == "HME100k":
        pred = _squeeze_spaces(prediction)
        return any(_squeeze_spaces(answer) in pred for answer in answers)
    pred = prediction.strip().translate(_FULLWIDTH_FOLD).lower().replace("\n", " ")
    return any(
        answer.translate(_FULLWIDTH_FOLD).lower().strip().replace("\n", " ") in pred for answer in answers
    )


def score_ocrbench(docs: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict[str, float]:
    """OCRBench: hit count, percent, score out of 1000, and hit counts per known category.

    Counters are local to each call: lmms-eval keeps them in a module-level dict that is never reset,
    so a second evaluation in one process adds to the first.
    """
    per_category: dict[str, int] = {}
    hits = 0
    for row, (doc, prediction) in enumerate(zip(docs, predictions, strict=True)):
        answers = as_text_list(doc["answer"], "answer", row)
        hit = int(ocrbench_hit(prediction, answers, str(doc["dataset"])))
        hits += hit
        category = str(doc["question_type"])
        # Unknown question types still count towards the totals, but get no per-category entry.
        if category in OCRBENCH_CATEGORIES:
            per_category[category] = per_category.get(category, 0) + hit
    metrics = {
        "correct": float(hits),
        "accuracy": 100.0 * hits / len(docs),
        "score": 1000.0 * hits / len(docs),
    }
    metrics.update({f"cat/{name}": float(count) for name, count in per_category.items()})
    return metrics


def gqa_exact_match(prediction: str, answer: str, protocol: str) -> bool:
    """GQA exact match.

    "default" (lmms-eval `exact_match` with ignore_case and ignore_punctuation): strip the prediction,
    lowercase both, delete every `string.punctuation` character from both; no article removal.
    "llava" (LLaVA's convert_gqa_for_eval.py + the official GQA script): strip, drop trailing periods,
    lowercase, then compare with the answer unchanged.
    """
    if protocol == "llava":
        return prediction.strip().rstrip(".").lower() == answer
    pred = prediction.strip().lower().translate(_DELETE_PUNCTUATION)
    return pred == answer.lower().translate(_DELETE_PUNCTUATION)


def score_gqa(
    docs: Sequence[Mapping[str, Any]], predictions: Sequence[str], protocol: str
) -> dict[str, float]:
    """GQA: exact-match accuracy in percent under the given protocol."""
    hits = 0
    for row, (doc, prediction) in enumerate(zip(docs, predictions, strict=True)):
        answer = doc["answer"]
        if not isinstance(answer, str):
            raise ValueError(f"gqa: row {row} has a non-string 'answer' ({type(answer).__name__})")
        hits += gqa_exact_match(prediction, answer, protocol)
    return {"accuracy": 100.0 * hits / len(docs)}
