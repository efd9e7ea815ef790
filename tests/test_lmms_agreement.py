"""Our eight benchmark scorers (protocol "default") against lmms-eval 0.7.3's own scoring code, same predictions.

lmms-eval's side runs as its evaluator would: each task YAML is loaded with lmms-eval's own loader; every output
is stripped (its Task.process_results does that before calling a task's process_results); per-doc results come
from the YAML's process_results, or for GQA from its declared `exact_match` metric with the declared options; and
each metric's declared aggregation gives the reported number, converted to our 0-100 scale. Docs are the synthetic
world's benchmark rows plus hand-made rows for cases the world lacks; predictions mix gold, wrong, empty and messy
answers. Disagreements are listed per doc and prediction so that a failure names the case.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mllm.eval.benchmarks import load_rows
from mllm.eval.metrics import BENCHMARKS, score_benchmark

LMMS_EVAL_MISSING = ("lmms-eval is not installed here (it needs torchvision, kept out of the default install); "
                     "install it in a separate env: pip install --no-deps lmms-eval==0.7.3 plus its core imports")
lmms_eval = pytest.importorskip("lmms_eval", reason=LMMS_EVAL_MISSING)

TASK_YAMLS: dict[str, str] = {
    "textvqa": "textvqa/textvqa_val.yaml",
    "chartqa": "chartqa/chartqa.yaml",
    "ocrbench": "ocrbench/ocrbench.yaml",
    "mme": "mme/mme.yaml",
    "seed": "seedbench/seedbench.yaml",
    "sqa_img": "scienceqa/scienceqa_img.yaml",
    "gqa": "gqa/gqa.yaml",
    "pope": "pope/pope.yaml",
}

# lmms-eval metric -> (our key, factor to our scale). OCRBench reports its hit count / 1000 (a score out of 1000
# only on the full 1000-question set), so it maps to our hit count. MME's category sums are already on our scale.
METRIC_MAP: dict[str, dict[str, tuple[str, float]]] = {
    "textvqa": {"exact_match": ("accuracy", 100.0)},
    "chartqa": {"relaxed_overall": ("relaxed_overall", 100.0), "relaxed_human_split": ("relaxed_human", 100.0),
                "relaxed_augmented_split": ("relaxed_augmented", 100.0)},
    "ocrbench": {"ocrbench_accuracy": ("correct", 1000.0)},
    "mme": {"mme_perception_score": ("perception", 1.0), "mme_cognition_score": ("cognition", 1.0)},
    "seed": {"seed_image": ("seed_image", 100.0), "seed_video": ("seed_video", 100.0), "seed_all": ("seed_all", 100.0)},
    "sqa_img": {"exact_match": ("accuracy", 100.0)},
    "gqa": {"exact_match": ("accuracy", 100.0)},
    "pope": {"pope_accuracy": ("accuracy", 100.0), "pope_precision": ("precision", 100.0),
             "pope_recall": ("recall", 100.0), "pope_f1_score": ("f1", 100.0), "pope_yes_ratio": ("yes_ratio", 100.0)},
}
# Declared metrics that are not scores (TextVQA's test-server submission file).
NOT_SCORES: dict[str, set[str]] = {"textvqa": {"submission"}}
# Our keys with no lmms-eval counterpart: OCRBench per-N rates and MME's maximum.
OURS_ONLY: dict[str, set[str]] = {"ocrbench": {"accuracy", "score"}, "mme": {"max_total"}}
# Options in a metric_list entry that are not metric keyword arguments (as lmms-eval's Task splits them).
_METRIC_ENTRY_KEYS = ("metric", "aggregation", "higher_is_better")

MME_PAIRS: tuple[str, ...] = ("count", "posters", "celebrity", "scene", "landmark", "artwork",
                              "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
OCRBENCH_EXTRA: tuple[tuple[str, str, Any], ...] = (
    ("IIIT5K", "Irregular Text Recognition", ["Coffee", "cafe"]),
    ("WordArt", "Artistic Text Recognition", ["ＳＴＯＰ"]),
    ("IAM", "Handwriting Recognition", "hello world"),
    ("NonSemanticText", "Non-Semantic Text Recognition", ["line one\nline two"]),
    ("textVQA", "Scene Text-centric VQA", ["Coca-Cola"]),
    ("docVQA", "Doc-oriented VQA", ["$1,250.00"]),
    ("FUNSD", "Key Information Extraction", ["John Smith"]),
    ("HME100k", "Handwritten Mathematical Expression Recognition", ["\\frac { a } { b }"]),
)
HANDMADE: dict[str, list[dict[str, Any]]] = {
    "textvqa": [
        {"question_id": 900, "question": "what brand?", "answers": ["coke"] * 3 + ["Coca-Cola."] * 2 + ["pepsi"] * 5},
        {"question_id": 901, "question": "how many?", "answers": ["two"] * 4 + ["2"] * 4 + ["Two."] * 2},
        {"question_id": 902, "question": "what is it?", "answers": ["it's a dog!"] * 2 + ["dog"] * 8},
        {"question_id": 903, "question": "how much?", "answers": ["3,000"] * 5 + ["3000"] * 3 + ["1.5"] * 2},
        {"question_id": 904, "question": "where?", "answers": ["the table"] * 6 + ["table"] * 2 + ["desk"] * 2},
    ],
    "chartqa": [
        {"question": "share?", "answer": "0.05", "type": "human_test"},
        {"question": "lowest?", "answer": "0", "type": "human_test"},
        {"question": "sum?", "answer": "1000", "type": "augmented_test"},
        {"question": "rising?", "answer": "Yes", "type": "human_test"},
        {"question": "rate?", "answer": "12%", "type": "augmented_test"},
        {"question": "change?", "answer": "-3.5", "type": "human_test"},
    ],
    "ocrbench": [{"question": "what is written?", "answer": answer, "dataset": dataset, "question_type": category}
                 for dataset, category, answer in OCRBENCH_EXTRA],
    "mme": [{"question_id": f"{category}/hand.png", "question": f"{category}? Please answer yes or no.",
             "answer": answer, "category": category} for category in MME_PAIRS for answer in ("Yes", "No")],
    "seed": [{"question_id": f"video_{i}", "question": "What happens next?", "answer": letter, "data_type": "video",
              "choice_a": "it stops", "choice_b": "it turns", "choice_c": "it jumps", "choice_d": "it falls"}
             for i, letter in enumerate("ACDB")],
    "sqa_img": [
        {"question": "Which is a mammal?", "choices": ["frog", "shark", "eel", "crab", "whale"], "answer": 4,
         "hint": ""},
        {"question": "Which is hot?", "choices": ["fire", "ice", "snow"], "answer": 0, "hint": "Think."},
        {"question": "Which is a shape?", "choices": ["red", "square", "loud"], "answer": 1, "hint": ""},
    ],
    "gqa": [{"question_id": "hand_0", "question": "What is he wearing?", "answer": "t-shirt", "imageId": "h0"},
            {"question_id": "hand_1", "question": "Which side is it on?", "answer": "left", "imageId": "h1"}],
    "pope": [],
}


def _task_config(benchmark: str) -> dict[str, Any]:
    """The benchmark's lmms-eval task YAML, loaded (includes and !function tags resolved) by lmms-eval itself."""
    return _load_task_yaml(TASK_YAMLS[benchmark])


@functools.cache
def _load_task_yaml(relative: str) -> dict[str, Any]:
    load_yaml_config = importlib.import_module("lmms_eval.utils").load_yaml_config
    return load_yaml_config(yaml_path=str(Path(lmms_eval.__file__).parent / "tasks" / relative), mode="full")


def _lmms_doc_results(config: Mapping[str, Any], doc: Mapping[str, Any], prediction: str) -> dict[str, Any]:
    """Per-doc results the way Task.process_results makes them for a generate_until task."""
    outputs = [prediction.strip()]
    if callable(config.get("process_results")):
        # TextVQA's process_results normalises doc["answers"] in place.
        return config["process_results"](copy.deepcopy(dict(doc)), outputs)
    registry = importlib.import_module("lmms_eval.api.registry")
    gold = doc[config["doc_to_target"]]
    results = {}
    for entry in config["metric_list"]:
        options = {key: value for key, value in entry.items() if key not in _METRIC_ENTRY_KEYS}
        score = registry.get_metric(entry["metric"])(references=[gold], predictions=outputs, **options)
        results[entry["metric"]] = score[entry["metric"]] if isinstance(score, dict) else score
    return results


def _lmms_aggregate(benchmark: str, docs: Sequence[Mapping[str, Any]], predictions: Sequence[str],
                    args: SimpleNamespace) -> dict[str, float]:
    """Every declared score metric that got items, aggregated as declared, under lmms-eval's metric names."""
    config = _task_config(benchmark)
    counts = _ocrbench_counts()
    for category in counts:
        counts[category] = 0
    items: dict[str, list[Any]] = defaultdict(list)
    for doc, prediction in zip(docs, predictions, strict=True):
        for metric, value in _lmms_doc_results(config, doc, prediction).items():
            items[metric].append(value)
    registry = importlib.import_module("lmms_eval.api.registry")
    aggregated = {}
    for entry in config["metric_list"]:
        metric = entry["metric"]
        if metric in NOT_SCORES.get(benchmark, set()):
            continue
        # MME's category sums are 0 over no categories; every other aggregation divides by the item count.
        if not items[metric] and benchmark != "mme":
            continue
        aggregate: Callable[..., float] = entry["aggregation"]
        if isinstance(aggregate, str):
            aggregate = registry.get_aggregation(aggregate)
        if "args" in inspect.signature(aggregate).parameters:
            aggregated[metric] = aggregate(items[metric], args=args)
        else:
            aggregated[metric] = aggregate(items[metric])
    return aggregated


def _ocrbench_counts() -> dict[str, int]:
    """lmms-eval's module-level OCRBench category counters (never reset by lmms-eval itself)."""
    aggregate = next(entry["aggregation"] for entry in _task_config("ocrbench")["metric_list"])
    return aggregate.__globals__["OCRBench_score"]


def _in_our_terms(benchmark: str, aggregated: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    """lmms-eval metric names and scales turned into ours; a metric this test does not know fails loudly."""
    mapping = METRIC_MAP[benchmark]
    unknown = set(aggregated) - set(mapping)
    assert not unknown, f"{benchmark}: lmms-eval reports {unknown} that this test does not map"
    return {prefix + mapping[name][0]: value * mapping[name][1] for name, value in aggregated.items()}


def lmms_metrics(benchmark: str, docs: Sequence[Mapping[str, Any]], predictions: Sequence[str],
                 args: SimpleNamespace) -> dict[str, float]:
    """lmms-eval's numbers under our metric keys, per-group ones computed on each group's docs."""
    expected = _in_our_terms(benchmark, _lmms_aggregate(benchmark, docs, predictions, args))
    groups: dict[str, list[int]] = defaultdict(list)
    for row, doc in enumerate(docs):
        groups[str(doc.get("category", doc.get("question_type")))].append(row)
    if benchmark == "ocrbench":
        counts = _ocrbench_counts()
        expected.update({f"cat/{category}": float(counts[category]) for category in groups if category in counts})
    elif benchmark == "pope":
        for category, rows in groups.items():
            subset = _lmms_aggregate("pope", [docs[i] for i in rows], [predictions[i] for i in rows], args)
            expected.update(_in_our_terms("pope", subset, prefix=f"{category}/"))
    elif benchmark == "mme":
        config = _task_config("mme")
        expected["total"] = expected.get("perception", 0.0) + expected.get("cognition", 0.0)
        for category, rows in groups.items():
            # Each MME doc yields one result, under its category's perception or cognition metric.
            results = [_lmms_doc_results(config, docs[i], predictions[i]) for i in rows]
            (metric,) = results[0]
            score = _lmms_aggregate("mme", [docs[i] for i in rows], [predictions[i] for i in rows], args)[metric]
            acc = 100.0 * statistics.mean(result[metric]["score"] for result in results)
            expected.update({f"score/{category}": score, f"acc/{category}": acc, f"acc_plus/{category}": score - acc})
    return expected


def gold_text(benchmark: str, doc: Mapping[str, Any]) -> str:
    """The answer a perfect model would give, as text (ScienceQA's index as its letter)."""
    if benchmark == "textvqa":
        return doc["answers"][0]
    if benchmark == "ocrbench":
        return doc["answer"] if isinstance(doc["answer"], str) else doc["answer"][0]
    if benchmark == "sqa_img":
        return chr(ord("A") + doc["answer"])
    return str(doc["answer"])


def _numeric_variants(text: str) -> list[str]:
    """Near and far numbers, thousands separators, percent and currency forms of a numeric answer."""
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        return []
    return [f"{value * 1.04:g}", f"{value * 1.06:g}", f"{value * 0.96:g}", f"{value:,.0f}", f"{value:.1f}",
            f"{value}%", f"{value / 100:g}", f"${text}"]


def candidates(benchmark: str, doc: Mapping[str, Any]) -> list[str]:
    """Predictions to try on `doc`: gold, wrong, empty and messy forms, some specific to the benchmark."""
    gold = gold_text(benchmark, doc)
    found = [gold, gold.upper(), gold.lower(), f"{gold}.", f"  {gold} \n", f"The answer is {gold}.",
             f"{gold}. It is the only one in the picture.", "", "zebra"]
    if benchmark == "textvqa":
        found += list(doc["answers"]) + ["2", "a dog", "3000"]
    elif benchmark in ("chartqa", "ocrbench"):
        found += _numeric_variants(gold) + [f"The text says {gold} here", gold.replace(" ", ""),
                                             gold.replace("\n", " "), "".join(chr(ord(c) + 0xFEE0) for c in "STOP")]
    elif benchmark in ("mme", "pope"):
        found += ["yes", "No", "no.", "Yes, there is a cat.", "No, there is not.", "y", "n", "Not sure.", "nope",
                  "maybe", " YES "]
    elif benchmark in ("seed", "sqa_img"):
        choices = doc["choices"] if benchmark == "sqa_img" else [doc[f"choice_{c}"] for c in "abcd"]
        option = choices[ord(gold) - ord("A")]
        found += [f"{gold}. {option}", f" {gold}. {option}", f"{gold.lower()}. {option}", f"({gold}) {option}",
                  f"{gold}) {option}", option, "A", "C", "A. " + choices[0]]
    elif benchmark == "gqa":
        found += [f"the {gold}", gold.replace("-", ""), f"{gold}!", f"'{gold}'", "left side"]
    return found


def benchmark_docs(world: Path, benchmark: str) -> list[dict[str, Any]]:
    """The world's rows without their image column, then the hand-made rows."""
    rows = [{key: value for key, value in row.items() if key != "image"}
            for row in load_rows(world / "benchmarks", benchmark)]
    return rows + copy.deepcopy(HANDMADE[benchmark])


@pytest.fixture(scope="module")
def lmms_args(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """What aggregations that take `args` read: OCRBench writes its report under output_path."""
    return SimpleNamespace(output_path=str(tmp_path_factory.mktemp("lmms_out")))


def _compare(benchmark: str, docs: Sequence[Mapping[str, Any]], predictions: Sequence[str],
             args: SimpleNamespace) -> str | None:
    """None when the two agree to 1e-9 on every lmms-eval number, else a description of the difference."""
    ours = score_benchmark(benchmark, docs, predictions)
    theirs = lmms_metrics(benchmark, docs, predictions, args)
    uncovered = set(ours) - set(theirs) - OURS_ONLY.get(benchmark, set())
    if uncovered or set(theirs) - set(ours):
        return f"key sets differ: ours only {sorted(uncovered)}, lmms-eval only {sorted(set(theirs) - set(ours))}"
    differing = {key: (ours[key], value) for key, value in theirs.items() if abs(ours[key] - value) > 1e-9}
    return f"(ours, lmms-eval): {differing}" if differing else None


@pytest.mark.parametrize("benchmark", [name for name in BENCHMARKS if name != "mme"])
def test_every_doc_and_prediction_scores_alike(tiny_world: Path, lmms_args: SimpleNamespace, benchmark: str) -> None:
    docs = benchmark_docs(tiny_world, benchmark)
    disagreements = []
    for doc in docs:
        for prediction in candidates(benchmark, doc):
            difference = _compare(benchmark, [doc], [prediction], lmms_args)
            if difference:
                disagreements.append(f"doc={doc} prediction={prediction!r}: {difference}")
    assert not disagreements, f"{len(disagreements)} disagreements:\n" + "\n".join(disagreements[:20])


def test_every_mme_pair_scores_alike(tiny_world: Path, lmms_args: SimpleNamespace) -> None:
    """MME scores images in pairs, so each image's two questions get predictions together."""
    docs = benchmark_docs(tiny_world, "mme")
    pairs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in docs:
        pairs[doc["question_id"]].append(doc)
    disagreements = []
    for pair in pairs.values():
        options = candidates("mme", pair[0])
        for first, second in zip(options, options[1:] + options[:1], strict=True):
            difference = _compare("mme", pair, [first, second], lmms_args)
            if difference:
                disagreements.append(f"pair={pair} predictions={[first, second]!r}: {difference}")
    assert not disagreements, f"{len(disagreements)} disagreements:\n" + "\n".join(disagreements[:20])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_benchmark_aggregates_agree(tiny_world: Path, lmms_args: SimpleNamespace, benchmark: str, seed: int) -> None:
    docs = benchmark_docs(tiny_world, benchmark)
    rng = random.Random(f"{benchmark}-{seed}")
    predictions = [rng.choice(candidates(benchmark, doc)) for doc in docs]
    assert _compare(benchmark, docs, predictions, lmms_args) is None


def test_ocrbench_counts_whole_set_out_of_1000(lmms_args: SimpleNamespace) -> None:
    """On a 1000-question set lmms-eval's number is our score / 1000 (its divisor is fixed at 1000)."""
    docs = [{"answer": ["STOP"], "dataset": "IIIT5K", "question_type": "Regular Text Recognition"}] * 1000
    predictions = ["stop"] * 613 + ["go"] * 387
    (reported,) = _lmms_aggregate("ocrbench", docs, predictions, lmms_args).values()
    ours = score_benchmark("ocrbench", docs, predictions)
    assert reported == pytest.approx(0.613)
    assert ours["score"] == pytest.approx(1000 * reported)
