"""Scorers for the yes/no and multiple-choice benchmarks: MME, SEED-Bench, ScienceQA-IMG and POPE.

Each ``score_*`` function takes rows and raw model outputs that `mllm.eval.metrics` has already
validated (same length, non-empty, required columns present) and returns percentages (0-100), except
MME's category scores, which are on MME's own 0-200-per-category scale. Behaviour follows lmms-eval
0.7.3 ("default") and, where the LLaVA-1.5 paper scored differently, LLaVA's own scripts ("llava").
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

MME_PERCEPTION: tuple[str, ...] = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION: tuple[str, ...] = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)

# LLaVA's eval_science_qa.py looks for "The answer is X." and then "The answer is X", options A-E only.
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-E])")


def _yes_no_label(value: Any, benchmark: str, row: int) -> str:
    """Ground-truth answer as "yes"/"no"; anything else is a data error."""
    label = str(value).lower().strip().replace(".", "")
    if label not in ("yes", "no"):
        raise ValueError(f"{benchmark}: row {row} has answer {value!r}; expected yes or no")
    return label


def parse_mme_answer(prediction: str) -> str:
    """MME's parser (from Otter, as in lmms-eval and LLaVA's converter): "yes", "no" or "other".

    After lowercasing, stripping and deleting periods: exact yes/no; a lone y/n; otherwise "yes" or else
    "no" found in the first four characters; anything else is "other", which is always wrong.
    """
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def score_mme(docs: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict[str, float]:
    """MME: acc, acc+ and their sum per category, plus perception, cognition and total sums.

    acc is question accuracy; acc+ the share of images (question_id) whose two questions are both right.
    Only categories present in `docs` enter the sums; `max_total` is 200 per category present.
    """
    known = set(MME_PERCEPTION) | set(MME_COGNITION)
    # category -> question_id -> list of per-question correctness
    groups: dict[str, dict[str, list[bool]]] = {}
    for row, (doc, prediction) in enumerate(zip(docs, predictions, strict=True)):
        category = str(doc["category"])
        if category not in known:
            raise ValueError(f"mme: row {row} has unknown category {category!r}")
        correct = parse_mme_answer(prediction) == _yes_no_label(doc["answer"], "mme", row)
        groups.setdefault(category, {}).setdefault(str(doc["question_id"]), []).append(correct)

    metrics: dict[str, float] = {}
    for category, images in groups.items():
        for question_id, outcomes in images.items():
            if len(outcomes) != 2:
                raise ValueError(
                    f"mme: question_id {question_id!r} (category {category!r}) has {len(outcomes)} "
                    "questions; MME scores images in pairs of exactly 2"
                )
        n_questions = sum(len(outcomes) for outcomes in images.values())
        acc = 100.0 * sum(sum(outcomes) for outcomes in images.values()) / n_questions
        acc_plus = 100.0 * sum(all(outcomes) for outcomes in images.values()) / len(images)
        metrics[f"acc/{category}"] = acc
        metrics[f"acc_plus/{category}"] = acc_plus
        metrics[f"score/{category}"] = acc + acc_plus

    perception = sum(metrics[f"score/{c}"] for c in MME_PERCEPTION if c in groups)
    cognition = sum(metrics[f"score/{c}"] for c in MME_COGNITION if c in groups)
    metrics.update(
        perception=perception,
        cognition=cognition,
        total=perception + cognition,
        max_total=200.0 * len(groups),
    )
    return metrics


def seed_letter(prediction: str) -> str:
    """SEED-Bench's parse: the first character of the stripped output ("B." -> "B", "(B)" -> "(")."""
    return prediction.strip()[:1]


def score_seed(docs: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict[str, float]:
    """SEED-Bench: accuracy on image rows, video rows (each only when present) and all rows, in percent."""
    outcomes: dict[str, list[bool]] = {"image": [], "video": []}
    for row, (doc, prediction) in enumerate(zip(docs, predictions, strict=True)):
        data_type = doc.get("data_type", "image")
        if data_type not in outcomes:
            raise ValueError(f"seed: row {row} has data_type {data_type!r}; expected 'image' or 'video'")
        outcomes[data_type].append(seed_letter(prediction).lower() == str(doc["answer"]).lower())
    everything = outcomes["image"] + outcomes["video"]
    metrics = {"seed_all": 100.0 * sum(everything) / len(everything)}
    metrics.update({f"seed_{kind}": 100.0 * sum(hits) / len(hits) for kind, hits in outcomes.items() if hits})
    return metrics


def sqa_is_correct(prediction: str, target: str, protocol: str) -> bool:
    """ScienceQA: is the output the target letter?

    Both protocols strip the output first (lmms-eval's sqa_process_results does, as does LLaVA's generation
    script). "default" (lmms-eval): the output equals the letter ignoring case, or starts with an upper-case
    letter and a period ("B. whale"), judged by that letter. "(B)", "The answer is B" and the option text
    are wrong. "llava" additionally accepts "The answer is X" / "The answer is X." anywhere, as
    eval_science_qa.py does.
    """
    prediction = prediction.strip()
    if prediction.lower() == target.lower():
        return True
    if len(prediction) >= 2 and prediction[0].isupper() and prediction[1] == ".":
        return prediction[0].lower() == target.lower()
    if protocol == "llava":
        match = _SQA_ANSWER_IS.search(prediction)
        return match is not None and match.group(1) == target
    return False


def score_sqa_img(
    docs: Sequence[Mapping[str, Any]], predictions: Sequence[str], protocol: str
) -> dict[str, float]:
    """ScienceQA-IMG: accuracy in percent; the target letter is chr(ord('A') + answer index)."""
    hits = 0
    for row, (doc, prediction) in enumerate(zip(docs, predictions, strict=True)):
        try:
            # operator.index accepts Python and numpy integers but refuses floats and strings.
            index = operator.index(doc["answer"])
        except TypeError:
            raise ValueError(
                f"sqa_img: row {row} has answer {doc['answer']!r}; expected an integer choice index"
            ) from None
        if not 0 <= index < 26:
            raise ValueError(f"sqa_img: row {row} has answer index {index} outside 0..25")
        hits += sqa_is_correct(prediction, chr(ord("A") + index), protocol)
    return {"accuracy": 100.0 * hits / len(docs)}


def pope_llava_label(prediction: str) -> str:
    """LLaVA eval_pope.py: keep the first sentence, drop commas, "no" if No/not/no is a word, else "yes".

    The output is stripped first, as LLaVA's generation script does before eval_pope.py reads it.
    """
    text = prediction.strip().split(".")[0].replace(",", "")
    words = text.split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, or 0.0 when the denominator is 0 (lmms-eval's guard; LLaVA's would raise)."""
    return numerator / denominator if denominator else 0.0


def _pope_metrics(
    preds: Sequence[str], gts: Sequence[str], yes_ratio_of_predictions: bool
) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio in percent for one group of POPE answers.

    A prediction that is neither "yes" nor "no" (possible under the default protocol) is wrong for
    accuracy and counts as neither a positive nor a negative for precision and recall.
    """
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, gts, strict=True))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, gts, strict=True))
    fn = sum(p == "no" and g == "yes" for p, g in zip(preds, gts, strict=True))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    said_yes = preds if yes_ratio_of_predictions else gts
    return {
        "accuracy": 100.0 * _ratio(sum(p == g for p, g in zip(preds, gts, strict=True)), len(gts)),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * _ratio(sum(label == "yes" for label in said_yes), len(said_yes)),
    }


def score_pope(
    docs: Sequence[Mapping[str, Any]], predictions: Sequence[str], protocol: str
) -> dict[str, float]:
    """POPE: pooled metrics plus the same five per `category` as "<category>/<metric>".

    "default" (lmms-eval): the prediction must equal yes/no after lower().strip(); `yes_ratio` is the
    share of yes LABELS. "llava" (eval_pope.py): outputs are parsed to yes/no; `yes_ratio` is the share
    of yes PREDICTIONS; `f1_mean` is the mean of the per-category F1s, the number the paper reports.
    """
    llava = protocol == "llava"
    preds = [pope_llava_label(p) if llava else p.lower().strip() for p in predictions]
    gts = [_yes_no_label(doc["answer"], "pope", row) for row, doc in enumerate(docs)]
    by_category: dict[str, list[int]] = {}
    for row, doc in enumerate(docs):
        by_category.setdefault(str(doc["category"]), []).append(row)

    metrics = _pope_metrics(preds, gts, yes_ratio_of_predictions=llava)
    category_f1: list[float] = []
    for category, rows in by_category.items():
        group = _pope_metrics(
            [preds[i] for i in rows], [gts[i] for i in rows], yes_ratio_of_predictions=llava
        )
        metrics.update({f"{category}/{name}": value for name, value in group.items()})
        category_f1.append(group["f1"])
    if llava:
        metrics["f1_mean"] = sum(category_f1) / len(category_f1)
    return metrics
