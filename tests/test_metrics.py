"""Hand-computed checks of the benchmark scorers against lmms-eval 0.7.3 and LLaVA-1.5 behaviour.

Every expected value is worked out by hand in the comment next to it; the edge cases are the ones
recorded as checked against the real lmms-eval scoring functions.
"""

from __future__ import annotations

from typing import Any

import pytest

from mllm.eval.answer_normalize import normalize_vqa_answer
from mllm.eval.metrics import BENCHMARKS, HEADLINE_METRIC, PROTOCOLS, headline, score_benchmark
from mllm.eval.scorers_choice import (
    parse_mme_answer,
    pope_llava_label,
    score_pope,
    seed_letter,
    sqa_is_correct,
)
from mllm.eval.scorers_vqa import gqa_exact_match, ocrbench_hit, relaxed_correctness, vqa_soft_accuracy

approx = pytest.approx


# ---------------------------------------------------------------- public constants


def test_constants() -> None:
    assert BENCHMARKS == ("textvqa", "chartqa", "ocrbench", "mme", "seed", "sqa_img", "gqa", "pope")
    assert PROTOCOLS == ("default", "llava")
    assert set(HEADLINE_METRIC) == set(BENCHMARKS)


# ---------------------------------------------------------------- answer normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),  # number word -> digit
        ("the Coca-Cola.", "coca cola"),  # article dropped, '-' -> space, final '.' deleted
        ("None", "0"),  # "none" is in the number map
        ("ten", "10"),
        ("eleven", "eleven"),  # only zero..ten are mapped
        ("3,000", "3000"),  # every comma is deleted first
        ("1.5", "1.5"),  # '.' before a digit survives
        ("5.", "5"),  # '.' not before a digit is deleted
        ("x.5", "x.5"),  # upstream's broken look-behind: only "followed by a digit" matters
        ("it's a dog!", "it 's dog"),  # "'s" split off, '!' -> space, "a" dropped
        ("dont", "don't"),  # contraction repaired
        ("couldn'tve", "couldn't've"),
        ("What?", "what"),  # '?' deleted
        ("(5)", "5"),  # '(' and ')' not next to a space -> spaces, then collapsed by split
        ("A  Big\tDog\n", "big dog"),  # whitespace collapsed, article dropped
        ("an apple", "apple"),
        ("yes.", "yes"),
        ("10:30", "10:30"),  # ':' is not in the punctuation list
    ],
)
def test_normalize_vqa_answer(raw: str, expected: str) -> None:
    assert normalize_vqa_answer(raw) == expected


def test_normalize_punctuation_next_to_space_is_deleted_not_spaced() -> None:
    # "coca - cola": '-' has a space beside it, so it is deleted -> "coca  cola" -> split/join -> "coca cola".
    assert normalize_vqa_answer("coca - cola") == "coca cola"
    # "a-b c/d": neither '-' nor '/' touches a space -> both become spaces -> "a b c d" -> "a" dropped.
    assert normalize_vqa_answer("a-b c/d") == "b c d"
    # "x- y/z": '-' touches a space (deleted), so "x y/z"; '/' does not (spaced) -> "x y z".
    assert normalize_vqa_answer("x- y/z") == "x y z"
    # The space test reads the text as it was before any mark was handled: ';' becomes a space, giving
    # "x -y a-b", but '-' touched no space originally, so both '-' become spaces -> "x y a b" -> "x y b".
    # (Testing the running text instead would delete '-' and glue "ab".)
    assert normalize_vqa_answer("x;-y a-b") == "x y b"


def test_normalize_deletes_at_most_32_periods() -> None:
    # Upstream passes re.UNICODE (32) as `count`: 40 periods -> 32 deleted, 8 left.
    assert normalize_vqa_answer("." * 40) == "." * 8


# ---------------------------------------------------------------- TextVQA


def _textvqa_doc(k: int) -> dict[str, Any]:
    return {"question_id": k, "answers": ["coke"] * k + ["pepsi"] * (10 - k)}


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        # k humans say "coke". Leaving out a matching answer leaves k-1 matches, otherwise k.
        (0, 0.0),
        (1, 0.3),  # 1 subset with 0 matches, 9 with 1 -> 9 * (1/3) / 10 = 0.3
        (2, 0.6),  # 2 subsets with 1, 8 with 2 -> (2/3 + 16/3) / 10 = 0.6
        (3, 0.9),  # 3 subsets with 2, 7 with 3 -> (3 * 2/3 + 7) / 10 = 0.9
        (4, 1.0),  # 4 subsets with 3, 6 with 4 -> all capped at 1 -> 1.0
        (10, 1.0),
    ],
)
def test_vqa_soft_accuracy(matching: int, expected: float) -> None:
    assert vqa_soft_accuracy("Coke", _textvqa_doc(matching)["answers"]) == approx(expected)


def test_textvqa_score_is_mean_percent() -> None:
    docs = [_textvqa_doc(k) for k in (1, 2, 3, 4)]
    metrics = score_benchmark("textvqa", docs, ["Coke"] * 4)
    # (30 + 60 + 90 + 100) / 4 = 70
    assert metrics == {"accuracy": approx(70.0)}
    assert headline("textvqa", metrics) == approx(70.0)


def test_textvqa_normalises_both_sides() -> None:
    docs = [{"answers": ["Coca-Cola"] * 10}, {"answers": ["2"] * 10}]
    # "the coca cola." and "Two" normalise to "coca cola" and "2": both full marks -> 100.
    assert score_benchmark("textvqa", docs, ["the coca cola.", "Two"])["accuracy"] == approx(100.0)


def test_textvqa_empty_answers_rejected() -> None:
    with pytest.raises(ValueError, match="row 0"):
        score_benchmark("textvqa", [{"answers": []}], ["x"])


# ---------------------------------------------------------------- ChartQA


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("12.5", "12", True),  # |12.5 - 12| / 12 = 0.0417 <= 0.05
        ("12.7", "12", False),  # 0.7 / 12 = 0.0583 > 0.05
        ("12.6", "12", True),  # 0.6 / 12 = 0.05 exactly, boundary included
        ("5%", "0.05", True),  # "5%" -> 0.05, exact
        ("$12", "12", False),  # float("$12") fails -> "$12" != "12"
        ("0", "0", True),  # zero target -> string compare "0" == "0"
        ("0.0", "0", False),  # zero target -> string compare "0.0" != "0"
        ("12.", "12", True),  # float("12.") = 12.0
        ("Yes", "yes", True),  # non-numeric -> case-insensitive equality
        ("1,000", "1000", False),  # float("1,000") fails -> string compare "1,000" != "1000"
        ("1,000", "1,000", True),  # ... and identical strings still match
        ("1000", "1,000", False),  # target does not parse -> string compare
        ("The answer is 12.", "12", False),  # multi-word answers never parse -> string compare fails
        ("12. It rose.", "12", False),  # multi-sentence answer: not a float, not equal
        (" 12.5 \n", "12", True),  # the prediction is stripped first ...
        (" Yes\n", "yes", True),  # ... which matters on the string path
        ("-12", "12", False),  # |-12 - 12| / 12 = 2
    ],
)
def test_relaxed_correctness(prediction: str, target: str, expected: bool) -> None:
    assert relaxed_correctness(prediction, target) is expected


def test_chartqa_splits_and_list_answers() -> None:
    docs = [
        {"answer": "12", "type": "human_test"},  # "12.5" -> right
        {"answer": "12", "type": "human_test"},  # "$12" -> wrong
        {"answer": "0.05", "type": "augmented_test"},  # "5%" -> right
        {"answer": "0", "type": "augmented_test"},  # "0.0" -> wrong
        {"answer": ["twelve", "12"], "type": "augmented"},  # max over answers: "12." matches "12" -> right
    ]
    metrics = score_benchmark("chartqa", docs, ["12.5", "$12", "5%", "0.0", "12."])
    # overall 3/5 = 60; human 1/2 = 50; augmented 2/3 = 66.67
    assert metrics == {
        "relaxed_overall": approx(60.0),
        "relaxed_human": approx(50.0),
        "relaxed_augmented": approx(200.0 / 3),
    }
    assert headline("chartqa", metrics) == approx(60.0)


def test_chartqa_omits_empty_split_and_rejects_unknown_type() -> None:
    metrics = score_benchmark("chartqa", [{"answer": "yes", "type": "human_test"}], ["Yes"])
    assert metrics == {"relaxed_overall": approx(100.0), "relaxed_human": approx(100.0)}
    with pytest.raises(ValueError, match="type"):
        score_benchmark("chartqa", [{"answer": "yes", "type": "val"}], ["yes"])


# ---------------------------------------------------------------- OCRBench


@pytest.mark.parametrize(
    ("prediction", "answers", "dataset", "expected"),
    [
        ("The sign says STOP here", ["STOP"], "IIIT5K", True),  # substring containment
        ("stop", ["STOP"], "IIIT5K", True),  # case-insensitive
        ("ST0P", ["STOP"], "IIIT5K", False),  # zero is not O
        ("nothing", ["STOP", "noth"], "IIIT5K", True),  # any answer of the list
        ("ＳＴＯＰ！", ["STOP!"], "IIIT5K", True),  # full-width folded to ASCII
        ("ＳＴＯＰ\u3000ＨＥＲＥ", ["stop here"], "IIIT5K", True),  # ideographic space -> space
        ("line one\nline two", ["one line"], "FUNSD", True),  # newline read as a space
        ("x^{2}+1", ["x ^ { 2 } + 1"], "HME100k", True),  # HME100k: spaces removed on both sides
        ("x ^ {2}\n+ 1", ["x^{2}+1"], "HME100k", True),
        ("X^{2}", ["x^{2}"], "HME100k", False),  # HME100k compares case-sensitively
        ("x ^ { 2 }", ["x^{2}"], "IIIT5K", False),  # other sources keep spaces
    ],
)
def test_ocrbench_hit(prediction: str, answers: list[str], dataset: str, expected: bool) -> None:
    assert ocrbench_hit(prediction, answers, dataset) is expected


def _ocr_docs() -> tuple[list[dict[str, Any]], list[str]]:
    docs = [
        {"answer": ["STOP"], "dataset": "IIIT5K", "question_type": "Regular Text Recognition"},
        {"answer": ["EXIT"], "dataset": "IIIT5K", "question_type": "Regular Text Recognition"},
        {
            "answer": "x^{2}",
            "dataset": "HME100k",
            "question_type": "Handwritten Mathematical Expression Recognition",
        },
        {"answer": ["42"], "dataset": "docVQA", "question_type": "Brand New Type"},
    ]
    return docs, ["The sign says STOP here", "ENTRY", "x ^ { 2 }", "It is 42."]


def test_ocrbench_totals_scaling_and_categories() -> None:
    docs, preds = _ocr_docs()
    metrics = score_benchmark("ocrbench", docs, preds)
    # hits: row0 yes, row1 no, row2 yes, row3 yes (unknown type still counts) -> 3 of 4
    assert metrics == {
        "correct": 3.0,
        "accuracy": approx(75.0),  # 3 / 4
        "score": approx(750.0),  # 1000 * 3 / 4
        "cat/Regular Text Recognition": 1.0,
        "cat/Handwritten Mathematical Expression Recognition": 1.0,
    }
    assert headline("ocrbench", metrics) == approx(75.0)


def test_ocrbench_has_no_state_between_calls() -> None:
    # lmms-eval's module-level counter returned 0.01 then 0.02 for the same input; here both calls agree.
    docs, preds = _ocr_docs()
    assert score_benchmark("ocrbench", docs, preds) == score_benchmark("ocrbench", docs, preds)


# ---------------------------------------------------------------- MME


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("Yes", "yes"),
        ("No.", "no"),  # periods deleted
        ("yes, there is", "yes"),  # "yes" within the first 4 characters
        ("There is a dog", "other"),  # "ther" has neither yes nor no
        ("Y", "yes"),
        ("N", "no"),
        ("x", "other"),
        ("Not at all", "no"),  # "not " contains "no"
        ("", "other"),
    ],
)
def test_parse_mme_answer(prediction: str, expected: str) -> None:
    assert parse_mme_answer(prediction) == expected


def _mme_docs() -> tuple[list[dict[str, Any]], list[str]]:
    rows = [
        # existence (perception): e1 both right; e2 one right ("There is a dog" parses to "other").
        ("e1.png", "existence", "Yes", "Yes"),
        ("e1.png", "existence", "No", "No."),
        ("e2.png", "existence", "Yes", "yes, there is"),
        ("e2.png", "existence", "No", "There is a dog"),
        # code_reasoning (cognition): c1 both right via single-letter answers.
        ("c1.png", "code_reasoning", "Yes", "Y"),
        ("c1.png", "code_reasoning", "No", "N"),
    ]
    docs = [{"question_id": q, "category": c, "answer": a} for q, c, a, _ in rows]
    return docs, [p for *_, p in rows]


def test_mme_category_and_group_sums() -> None:
    docs, preds = _mme_docs()
    metrics = score_benchmark("mme", docs, preds)
    # existence: acc = 3/4 = 75, acc+ = 1 of 2 images = 50, score 125
    # code_reasoning: acc = 100, acc+ = 100, score 200
    assert metrics == {
        "acc/existence": approx(75.0),
        "acc_plus/existence": approx(50.0),
        "score/existence": approx(125.0),
        "acc/code_reasoning": approx(100.0),
        "acc_plus/code_reasoning": approx(100.0),
        "score/code_reasoning": approx(200.0),
        "perception": approx(125.0),
        "cognition": approx(200.0),
        "total": approx(325.0),
        "max_total": approx(400.0),  # 2 categories x 200
    }
    # headline = 100 * 325 / 400 = 81.25
    assert headline("mme", metrics) == approx(81.25)


def test_mme_pair_count_error_names_question_id() -> None:
    docs, preds = _mme_docs()
    docs.append({"question_id": "e2.png", "category": "existence", "answer": "No"})
    with pytest.raises(ValueError, match="e2.png"):
        score_benchmark("mme", docs, preds + ["No"])


def test_mme_rejects_unknown_category_and_bad_label() -> None:
    with pytest.raises(ValueError, match="category"):
        score_benchmark("mme", [{"question_id": "a", "category": "vibes", "answer": "Yes"}], ["Yes"])
    with pytest.raises(ValueError, match="yes or no"):
        score_benchmark("mme", [{"question_id": "a", "category": "OCR", "answer": "Maybe"}], ["Yes"])


# ---------------------------------------------------------------- SEED-Bench


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [("B", "B"), ("B.", "B"), ("(B)", "("), ("The answer is B", "T"), ("  b) cat", "b"), ("", "")],
)
def test_seed_letter(prediction: str, expected: str) -> None:
    assert seed_letter(prediction) == expected


def test_seed_image_video_split() -> None:
    docs = [
        {"answer": "B", "data_type": "image"},  # "B." -> B, right
        {"answer": "B", "data_type": "image"},  # "(B)" -> "(", wrong
        {"answer": "B", "data_type": "image"},  # "The answer is B" -> "T", wrong
        {"answer": "B"},  # no data_type -> image; "b" matches ignoring case, right
        {"answer": "A", "data_type": "video"},  # right
        {"answer": "C", "data_type": "video"},  # right
    ]
    preds = ["B.", "(B)", "The answer is B", "b", "A", "C"]
    metrics = score_benchmark("seed", docs, preds)
    # image 2/4 = 50; video 2/2 = 100; all 4/6 = 66.67
    assert metrics == {"seed_all": approx(400.0 / 6), "seed_image": approx(50.0), "seed_video": approx(100.0)}
    assert headline("seed", metrics) == approx(50.0)


def test_seed_video_only_omits_image_and_has_no_headline() -> None:
    metrics = score_benchmark("seed", [{"answer": "A", "data_type": "video"}], ["A"])
    assert metrics == {"seed_all": approx(100.0), "seed_video": approx(100.0)}
    with pytest.raises(ValueError, match="seed_image"):
        headline("seed", metrics)


def test_seed_rejects_unknown_data_type() -> None:
    with pytest.raises(ValueError, match="data_type"):
        score_benchmark("seed", [{"answer": "A", "data_type": "audio"}], ["A"])


# ---------------------------------------------------------------- ScienceQA-IMG


@pytest.mark.parametrize(
    ("prediction", "default", "llava"),
    [
        ("B", True, True),
        ("b", True, True),  # case-insensitive letter
        ("B. whale", True, True),  # "X." prefix form
        ("B.", True, True),
        ("A. whale", False, False),  # prefix form decides by its letter
        ("(B)", False, False),
        ("whale", False, False),
        ("The answer is B", False, True),  # LLaVA's eval_science_qa.py accepts it with or without "."
        ("The answer is B.", False, True),
        ("I think so. The answer is B.", False, True),  # searched anywhere
        ("The answer is A.", False, False),
        ("the answer is b", False, False),  # LLaVA's pattern is case-sensitive
        (" B. whale", True, True),  # both strip first, as lmms-eval's sqa_process_results does
    ],
)
def test_sqa_is_correct(prediction: str, default: bool, llava: bool) -> None:
    assert sqa_is_correct(prediction, "B", "default") is default
    assert sqa_is_correct(prediction, "B", "llava") is llava


def test_sqa_img_accuracy_per_protocol() -> None:
    doc = {"question": "Which is a mammal?", "choices": ["frog", "whale", "shark"], "answer": 1, "hint": ""}
    preds = ["B", "b", "B. whale", "(B)", "The answer is B.", "whale"]
    docs = [doc] * len(preds)
    # default: B, b, "B. whale" right -> 3/6 = 50; llava additionally "The answer is B." -> 4/6
    assert score_benchmark("sqa_img", docs, preds) == {"accuracy": approx(50.0)}
    assert score_benchmark("sqa_img", docs, preds, "llava") == {"accuracy": approx(400.0 / 6)}


def test_sqa_img_target_from_numpy_like_index() -> None:
    class Index:  # anything with __index__ (numpy integers) is an index
        def __index__(self) -> int:
            return 2

    assert score_benchmark("sqa_img", [{"answer": Index()}], ["C"])["accuracy"] == approx(100.0)
    with pytest.raises(ValueError, match="row 0"):
        score_benchmark("sqa_img", [{"answer": "B"}], ["B"])


# ---------------------------------------------------------------- GQA


@pytest.mark.parametrize(
    ("prediction", "answer", "default", "llava"),
    [
        ("Yes.", "yes", True, True),
        ("t-shirt", "tshirt", True, False),  # default deletes '-'; llava does not
        ("the table", "table", False, False),  # no article removal in either
        ("Left", "left", True, True),
        ("yes!", "yes", True, False),  # llava only drops trailing periods
        ("  Left.. \n", "left", True, True),
        ("left side", "left", False, False),
    ],
)
def test_gqa_exact_match(prediction: str, answer: str, default: bool, llava: bool) -> None:
    assert gqa_exact_match(prediction, answer, "default") is default
    assert gqa_exact_match(prediction, answer, "llava") is llava


def test_gqa_accuracy() -> None:
    docs = [{"answer": "yes"}, {"answer": "tshirt"}, {"answer": "table"}, {"answer": "left"}]
    preds = ["Yes.", "t-shirt", "the table", "Left"]
    # default: rows 0, 1, 3 right -> 75; llava: rows 0, 3 right -> 50
    assert score_benchmark("gqa", docs, preds) == {"accuracy": approx(75.0)}
    assert score_benchmark("gqa", docs, preds, "llava") == {"accuracy": approx(50.0)}


# ---------------------------------------------------------------- POPE


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("Yes.", "yes"),
        ("yes", "yes"),
        ("No, there is not.", "no"),  # first sentence "No, there is not" -> "No" is a word
        ("There is not a dog.", "no"),  # "not" is a word
        ("Yes. No.", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # upper-case NO is not in LLaVA's word set
        ("Nope", "yes"),
        ("no\n", "no"),  # stripped before splitting on spaces
    ],
)
def test_pope_llava_label(prediction: str, expected: str) -> None:
    assert pope_llava_label(prediction) == expected


def test_pope_default_exact_strings() -> None:
    rows = [
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("no", "no"),
        ("yes", "no"),
        ("no", "yes"),
        ("No, there is not.", "no"),
    ]
    docs = [{"answer": gt, "category": "random"} for _, gt in rows]
    metrics = score_benchmark("pope", docs, [p for p, _ in rows])
    # after lower().strip(): right = rows 0, 2 -> acc 2/6 = 33.33 ("Yes." and "No, there is not." are wrong)
    # TP = row0, FP = row3 -> precision 1/2; FN = row4 (row1 "yes." is neither) -> recall 1/2; F1 = 0.5
    # yes_ratio from labels: 3 yes of 6 -> 50
    pooled = {"accuracy": 100.0 / 3, "precision": 50.0, "recall": 50.0, "f1": 50.0, "yes_ratio": 50.0}
    expected = dict(pooled) | {f"random/{k}": v for k, v in pooled.items()}
    assert metrics == approx(expected)
    assert headline("pope", metrics) == approx(50.0)


def test_pope_always_no_model() -> None:
    docs = [{"answer": gt, "category": "popular"} for gt in ["yes", "no"] * 50]
    default = score_benchmark("pope", docs, ["no"] * 100)
    llava = score_benchmark("pope", docs, ["no"] * 100, "llava")
    # default reports the label balance (50 yes of 100); llava the model's yes-rate (0 of 100)
    assert default["yes_ratio"] == approx(50.0)
    assert llava["yes_ratio"] == approx(0.0)
    # no positives predicted: precision 0/0 -> 0, recall 0/50 = 0, F1 guarded -> 0; accuracy 50/100
    for metrics in (default, llava):
        assert (metrics["precision"], metrics["recall"], metrics["f1"]) == (0.0, 0.0, 0.0)
        assert metrics["accuracy"] == approx(50.0)


def _pope_three_categories() -> tuple[list[dict[str, Any]], list[str]]:
    gts = ["yes", "yes", "no", "no"]
    preds = {
        "adversarial": ["Yes", "Yes", "Yes", "No"],  # TP 2, FP 1, TN 1, FN 0
        "popular": ["Yes", "No", "No", "No"],  # TP 1, FP 0, TN 2, FN 1
        "random": ["Yes", "Yes", "No", "No"],  # TP 2, FP 0, TN 2, FN 0
    }
    docs = [{"answer": gt, "category": cat} for cat in preds for gt in gts]
    return docs, [p for cat in preds for p in preds[cat]]


def test_pope_llava_mean_f1_vs_pooled() -> None:
    docs, preds = _pope_three_categories()
    metrics = score_benchmark("pope", docs, preds, "llava")
    # adversarial: P = 2/3, R = 1, F1 = 2 * (2/3) / (5/3) = 0.8; acc 3/4; predicted yes 3/4
    assert metrics["adversarial/f1"] == approx(80.0)
    assert metrics["adversarial/precision"] == approx(200.0 / 3)
    assert metrics["adversarial/accuracy"] == approx(75.0)
    assert metrics["adversarial/yes_ratio"] == approx(75.0)
    # popular: P = 1, R = 1/2, F1 = 2 * 0.5 / 1.5 = 2/3; predicted yes 1/4
    assert metrics["popular/f1"] == approx(200.0 / 3)
    assert metrics["popular/recall"] == approx(50.0)
    assert metrics["popular/yes_ratio"] == approx(25.0)
    # random: perfect
    assert metrics["random/f1"] == approx(100.0)
    # paper number: (80 + 66.67 + 100) / 3 = 82.22
    assert metrics["f1_mean"] == approx((80.0 + 200.0 / 3 + 100.0) / 3)
    # pooled: TP 5, FP 1, FN 1, TN 5 -> P = R = F1 = 5/6 = 83.33, acc 10/12, predicted yes 6/12
    assert metrics["f1"] == approx(500.0 / 6)
    assert metrics["accuracy"] == approx(1000.0 / 12)
    assert metrics["yes_ratio"] == approx(50.0)
    assert headline("pope", metrics) == approx(metrics["f1_mean"])
    assert metrics["f1_mean"] != approx(metrics["f1"])


def test_pope_default_has_no_mean_and_headline_is_pooled_f1() -> None:
    docs, preds = _pope_three_categories()
    metrics = score_benchmark("pope", docs, [p.lower() for p in preds])
    # lowercase predictions score like the llava parse here: pooled F1 5/6
    assert "f1_mean" not in metrics
    assert headline("pope", metrics) == approx(500.0 / 6)
    # "Yes"/"No" capitalised are still exact after lower(): same numbers
    assert score_benchmark("pope", docs, preds) == approx(metrics)


def test_pope_scorer_guards_all_zero_group() -> None:
    # A group where nothing parses as yes/no under default: acc 0, P = R = F1 = 0 (no division error).
    metrics = score_pope([{"answer": "yes", "category": "c"}], ["maybe"], "default")
    assert metrics["f1"] == 0.0 and metrics["c/precision"] == 0.0 and metrics["accuracy"] == 0.0


# ---------------------------------------------------------------- input errors


def test_unknown_benchmark_and_protocol() -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'vqav2'"):
        score_benchmark("vqav2", [{"answer": "x"}], ["x"])
    with pytest.raises(ValueError, match="unknown protocol 'paper'"):
        score_benchmark("gqa", [{"answer": "x"}], ["x"], protocol="paper")
    with pytest.raises(ValueError, match="unknown benchmark"):
        headline("vqav2", {"accuracy": 1.0})


def test_length_mismatch_and_empty() -> None:
    with pytest.raises(ValueError, match="2 docs but 1 predictions"):
        score_benchmark("gqa", [{"answer": "x"}, {"answer": "y"}], ["x"])
    with pytest.raises(ValueError, match="empty"):
        score_benchmark("gqa", [], [])


def test_missing_column_names_column_and_row() -> None:
    docs = [{"answers": ["a"] * 10}, {"question": "no answers here"}]
    with pytest.raises(ValueError, match=r"row 1 is missing column 'answers'"):
        score_benchmark("textvqa", docs, ["a", "b"])
    with pytest.raises(ValueError, match=r"row 0 is missing column 'category'"):
        score_benchmark("pope", [{"answer": "yes"}], ["yes"])


def test_non_string_prediction_rejected() -> None:
    with pytest.raises(ValueError, match="prediction 0"):
        score_benchmark("gqa", [{"answer": "x"}], [None])  # type: ignore[list-item]


def test_headline_missing_keys() -> None:
    with pytest.raises(ValueError, match="max_total"):
        headline("mme", {"total": 10.0, "max_total": 0.0})
    with pytest.raises(ValueError, match="accuracy"):
        headline("gqa", {"f1": 1.0})
