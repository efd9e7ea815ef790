"""`benchmarks/existence_stage.py`: POPE-only stage data that is balanced and true to each image's caption."""

from __future__ import annotations

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


def test_questions_are_balanced_true_to_the_caption_and_asked_as_pope_asks(existence: ModuleType,
                                                                           tiny_world: Path) -> None:
    align = load_records(tiny_world / "stage_data" / "align.json")
    captions = {r["id"]: r["conversations"][1]["value"] for r in align}
    records = existence.existence_records(align, seed=1)
    with_shapes = [c for c in captions.values() if any(f" {s}." in c for s in SHAPES)]
    assert len(records) == len(with_shapes) > 0
    for record in records:
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n") and len(turns) in (4, 8)
        answers = [t["value"] for t in turns[1::2]]
        assert answers.count("yes") == answers.count("no")
        for question, answer in zip(turns[::2], answers, strict=True):
            text = question["value"].removeprefix("<image>\n")
            shape = text.split("Is there a ")[1].split(" in the image?")[0]
            assert text == build_prompt("pope", {"question": f"Is there a {shape} in the image?"})
            assert (f" {shape}." in captions[record["id"]]) == (answer == "yes"), (record["id"], shape)
    assert existence.existence_records(align, seed=1) == records != existence.existence_records(align, seed=2)
