"""Exact prompt strings per benchmark, as lmms-eval 0.7.3 (default) and LLaVA-1.5 (TextVQA) build them."""

from __future__ import annotations

import pytest

from mllm.eval.metrics import BENCHMARKS
from mllm.eval.prompts import MAX_NEW_TOKENS, build_prompt

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def test_max_new_tokens() -> None:
    # lmms-eval YAMLs: chartqa/mme/sqa_img/gqa 16, ocrbench/pope 128; textvqa/seed set none -> 32.
    assert MAX_NEW_TOKENS == {
        "textvqa": 32,
        "chartqa": 16,
        "ocrbench": 128,
        "mme": 16,
        "seed": 32,
        "sqa_img": 16,
        "gqa": 16,
        "pope": 128,
    }
    assert set(MAX_NEW_TOKENS) == set(BENCHMARKS)


def test_textvqa_default_capitalize_lowercases_the_rest() -> None:
    doc = {"question": "what does the RTX sign say?", "ocr_tokens": ["RTX"]}
    # str.capitalize(): "W" up, everything else down ("RTX" -> "rtx"); no OCR tokens by default.
    assert build_prompt("textvqa", doc) == "What does the rtx sign say?" + SHORT


def test_textvqa_llava_adds_ocr_tokens_and_keeps_case() -> None:
    doc = {"question": "what does the RTX sign say?", "ocr_tokens": ["STOP", "AHEAD"]}
    assert build_prompt("textvqa", doc, "llava") == (
        "What does the RTX sign say?\nReference OCR token: STOP, AHEAD" + SHORT
    )


def test_textvqa_llava_empty_ocr_tokens_keep_the_line() -> None:
    # LLaVA's llava_textvqa_val_v051_ocr.jsonl keeps "Reference OCR token: " with nothing after it.
    doc = {"question": "whats the lowest number yard line that you can see?", "ocr_tokens": []}
    assert build_prompt("textvqa", doc, "llava") == (
        "Whats the lowest number yard line that you can see?\nReference OCR token: " + SHORT
    )


def test_textvqa_llava_needs_ocr_tokens() -> None:
    with pytest.raises(ValueError, match="ocr_tokens"):
        build_prompt("textvqa", {"question": "what?"}, "llava")


def test_chartqa() -> None:
    doc = {"question": "What is the value of Japan?", "answer": "12", "type": "human_test"}
    assert (
        build_prompt("chartqa", doc) == "What is the value of Japan?\nAnswer the question with a single word."
    )


def test_ocrbench_question_only_stripped() -> None:
    assert (
        build_prompt("ocrbench", {"question": "  what is written in the image?\n"})
        == "what is written in the image?"
    )


def test_mme_replaces_yes_no_sentence() -> None:
    doc = {"question": "Is there a dog in the image? Please answer yes or no."}
    assert build_prompt("mme", doc) == "Is there a dog in the image?" + SHORT
    # Without the sentence the instruction is still appended (lmms-eval removes, then always appends).
    assert build_prompt("mme", {"question": "Is there a dog?"}) == "Is there a dog?" + SHORT


def test_seed_options() -> None:
    doc = {
        "question": "How many towels are in the image?",
        "choice_a": "One",
        "choice_b": "Two",
        "choice_c": "Three",
        "choice_d": "Four",
    }
    assert build_prompt("seed", doc) == (
        "How many towels are in the image?\nA. One\nB. Two\nC. Three\nD. Four" + LETTER
    )


def test_sqa_img_without_and_with_hint() -> None:
    doc = {"question": "Which is a mammal?", "choices": ["frog", "whale", "shark"], "hint": "", "answer": 1}
    assert build_prompt("sqa_img", doc) == "Which is a mammal?\nA. frog\nB. whale\nC. shark" + LETTER
    with_hint = dict(doc, hint="Whales breathe air.")
    assert build_prompt("sqa_img", with_hint) == (
        "Context: Whales breathe air.\nWhich is a mammal?\nA. frog\nB. whale\nC. shark" + LETTER
    )
    assert build_prompt("sqa_img", dict(doc, hint=None)) == build_prompt("sqa_img", doc)


def test_gqa_and_pope() -> None:
    assert build_prompt("gqa", {"question": "Is the cup on the left?"}) == "Is the cup on the left?" + SHORT
    assert build_prompt("pope", {"question": " Is there a car in the image? "}) == (
        "Is there a car in the image?" + SHORT
    )


@pytest.mark.parametrize("benchmark", [b for b in BENCHMARKS if b != "textvqa"])
def test_llava_protocol_changes_only_textvqa(benchmark: str) -> None:
    doc = {
        "question": "Q? Please answer yes or no.",
        "hint": "",
        "choices": ["x", "y"],
        "choice_a": "a",
        "choice_b": "b",
        "choice_c": "c",
        "choice_d": "d",
    }
    assert build_prompt(benchmark, doc, "llava") == build_prompt(benchmark, doc)


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown benchmark"):
        build_prompt("vqav2", {"question": "q"})
    with pytest.raises(ValueError, match="unknown protocol"):
        build_prompt("gqa", {"question": "q"}, "paper")
    with pytest.raises(ValueError, match="'choice_c'"):
        build_prompt("seed", {"question": "q", "choice_a": "a", "choice_b": "b"})
    with pytest.raises(ValueError, match="'question'"):
        build_prompt("pope", {"answer": "yes"})
    with pytest.raises(ValueError, match="'choices'"):
        build_prompt("sqa_img", {"question": "q", "hint": "", "choices": "A or B"})
