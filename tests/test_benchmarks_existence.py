"""`benchmarks/existence_stage.py`: POPE-only stage data that is balanced and true to each image's caption."""

from __future__ import annotations

import collections
import importlib
from pathlib import Path
from types import ModuleType

import pytest

from mllm.data.llava_json import load_records
from mllm.eval.prompts import build_prompt
from mllm.world.scene import SHAPES

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def existence(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("existence_stage")


def _questions(records: list[dict], captions: dict[str, str]) -> list[tuple[str, str]]:
    """(shape, answer) of every question, checked to be POPE's prompt and true to the image's caption."""
    asked = []
    for record in records:
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n") and 2 <= len(turns) <= 8
        for question, reply in zip(turns[::2], turns[1::2], strict=True):
            text = question["value"].removeprefix("<image>\n")
            shape = text.split("Is there a ")[1].split(" in the image?")[0]
            assert text == build_prompt("pope", {"question": f"Is there a {shape} in the image?"})
            assert (f" {shape}." in captions[record["id"]]) == (reply["value"] == "yes"), (record["id"], shape)
            asked.append((shape, reply["value"]))
    return asked


def test_per_image_questions_are_balanced_and_true_to_the_caption(existence: ModuleType, tiny_world: Path) -> None:
    align = load_records(tiny_world / "stage_data" / "align.json")
    captions = {r["id"]: r["conversations"][1]["value"] for r in align}
    records = existence.existence_records(align, seed=1)
    assert len(records) == sum(any(f" {s}." in c for s in SHAPES) for c in captions.values()) > 0
    for record in records:
        answers = [answer for _, answer in _questions([record], captions)]
        assert len(answers) in (2, 4) and answers.count("yes") == answers.count("no")
    assert existence.existence_records(align, seed=1) == records != existence.existence_records(align, seed=2)


def test_shape_balanced_questions_ask_every_shape_as_often_present_as_absent(existence: ModuleType,
                                                                            tiny_world: Path) -> None:
    align = load_records(tiny_world / "stage_data" / "align.json")
    captions = {r["id"]: r["conversations"][1]["value"] for r in align}
    counts = collections.Counter(_questions(existence.shape_balanced_records(align, per_shape=3, seed=0), captions))
    assert counts == {(shape, answer): 3 for shape in SHAPES for answer in ("yes", "no")}


def test_repeat_conversations_are_text_only_and_answered_by_their_run(existence: ModuleType) -> None:
    records = existence.repeat_records(["red", "star", "7"], count=20, seed=0)
    assert len({r["id"] for r in records}) == 20
    for record in records:
        question, reply = record["conversations"]
        assert "image" not in record and question["value"] == f"Repeat: {reply['value']}"
        assert 4 <= len(reply["value"].split()) <= 12 and set(reply["value"].split()) <= {"red", "star", "7"}
