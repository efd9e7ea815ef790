"""`benchmarks/lm_choice_probe.py`: letter-of-the-matching-option prompts, true and held out as stated."""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from types import ModuleType

import pytest
from transformers import AutoTokenizer

from mllm.eval.prompts import build_prompt

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("lm_choice_probe")


def _options(prompt: str) -> list[str]:
    return [line[3:] for line in prompt.split("\n") if line[:3] in ("A. ", "B. ", "C. ", "D. ")]


@pytest.mark.parametrize("order", ["before", "after"])
def test_the_target_letter_names_the_asked_word_and_test_tuples_never_train(probe: ModuleType, tiny_world: Path,
                                                                            order: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_world / "tokenizer")
    task = probe.ChoiceTask(tokenizer, order)
    rng = random.Random(0)
    for testing in (False, True):
        for n_options in (2, 3, 4):
            ids, letter = task.example(rng, n_options, testing)
            text = tokenizer.decode(ids)
            prompt = text[text.index("Which option") if order == "before" else text.index("A. "):]
            options = _options(prompt)
            asked = prompt.split("Which option is ")[1].split("?")[0]
            assert len(options) == n_options and probe.held_out(tuple(options)) == testing
            assert tokenizer.decode([letter]).strip() == "ABCD"[options.index(asked)]
            assert (prompt.index("Which option") < prompt.index("A. ")) == (order == "before")


def test_before_is_the_benchmarks_option_layout(probe: ModuleType, tiny_world: Path) -> None:
    task = probe.ChoiceTask(AutoTokenizer.from_pretrained(tiny_world / "tokenizer"), "before")
    assert task.prompt(("red", "star", "ring"), 2) == build_prompt(
        "sqa_img", {"question": "Which option is ring?", "choices": ["red", "star", "ring"], "hint": None})
    pairs = [(a, b) for a in probe.WORDS for b in probe.WORDS if a != b]
    assert 0.05 < sum(map(probe.held_out, pairs)) / len(pairs) < 0.15


def test_left_padding_ends_every_row_at_its_prompt_end(probe: ModuleType) -> None:
    ids, mask = probe.left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
