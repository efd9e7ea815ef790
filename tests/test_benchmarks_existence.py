"""`benchmarks/existence_stage.py`: POPE-only stage data that is balanced and true to each image's caption."""

from __future__ import annotations

import collections
import importlib
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mllm.data.llava_json import load_records
from mllm.eval.prompts import build_prompt
from mllm.train_stages.sketches import load_cells
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


@pytest.fixture
def device_data(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS / "existence_device"))
    return importlib.import_module("prepare")


def test_single_turn_records_keep_every_question_with_its_image(existence: ModuleType, device_data: ModuleType,
                                                                tiny_world: Path) -> None:
    align = load_records(tiny_world / "stage_data" / "align.json")
    captions = {r["id"]: r["conversations"][1]["value"] for r in align}
    multi = existence.existence_records(align, seed=0)
    single = device_data.single_turn(multi)
    assert len(single) == sum(len(r["conversations"]) // 2 for r in multi) == len({r["id"] for r in single})
    by_image = {r["id"]: r["image"] for r in multi}
    for record in single:
        assert len(record["conversations"]) == 2 and record["image"] == by_image[record["id"].rsplit("-", 1)[0]]
    as_own = [{**r, "id": r["id"].rsplit("-", 1)[0]} for r in single]
    assert sorted(_questions(as_own, captions)) == sorted(_questions(multi, captions))


def test_one_object_and_text_questions_are_balanced_and_true(device_data: ModuleType, tiny_world: Path) -> None:
    align = load_records(tiny_world / "stage_data" / "align.json")
    captions = {r["id"]: r["conversations"][1]["value"] for r in align}
    one = device_data.one_object(align)
    assert one and all(captions[r["id"].rsplit("-", 1)[0]].startswith("One object.") for r in one)
    asked = _questions([{**r, "id": r["id"].rsplit("-", 1)[0]} for r in one], captions)
    assert [a for _, a in asked].count("yes") == len(asked) // 2
    text = device_data.text_questions(align, per_caption=4)
    for record in text:
        assert "image" not in record
        caption, question = record["conversations"][0]["value"].split("\n", 1)
        assert caption == captions[record["id"].rsplit("-", 1)[0]]
        shape = question.split("Is there a ")[1].split(" in the image?")[0]
        assert (f" {shape}." in caption) == (record["conversations"][1]["value"] == "yes")
    assert sum(r["conversations"][1]["value"] == "yes" for r in text) * 2 == len(text)


def test_answer_source_probe_reads_each_yes_no_reply_by_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probe = importlib.import_module("answer_source_probe")
    yes, no, other = 5, 6, 7
    # three replies: "yes" (turn 0), a two-token non-yes/no reply (turn 1), "no" (turn 2)
    labels = torch.tensor([-100, -100, yes, 1, -100, other, 2, -100, no, 1])
    logits = torch.zeros(10, 8)
    logits[1, yes] = 1.0  # predicts the first reply's "yes": right
    logits[7, yes] = 1.0  # picks "yes" where "no" is due: wrong
    assert probe.yes_no_picks(logits, labels, [(yes, no)]) == [(0, True, True), (2, False, True)]


def test_sketch_scenes_name_every_object_of_each_shape_caption(tiny_world: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """sketch_lm.py's sketches come from the align captions: one cell of (colour, shape) per object stated."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    scenes = importlib.import_module("sketch_lm").scenes_of(tiny_world / "stage_data" / "align.json")
    align = load_records(tiny_world / "stage_data" / "align.json")
    captions = {r["image"]: r["conversations"][1]["value"] for r in align}
    counts = {"One": 1, "Two": 2, "Three": 3, "Four": 4}
    assert scenes
    for image, cells in scenes.items():
        caption = captions[image]
        assert len(cells) == counts[caption.split()[0]], caption
        for colour, shape in cells.values():
            assert shape in SHAPES and f"{colour} {shape}." in caption
    assert not any(c.startswith("A bar chart") for i, c in captions.items() if i in scenes)


def test_sketch_scenes_with_signs_put_the_word_in_every_cell_of_its_row(tiny_world: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sketch_lm = importlib.import_module("sketch_lm")
    align = tiny_world / "stage_data" / "align.json"
    shapes_only, scenes = sketch_lm.scenes_of(align), sketch_lm.scenes_of(align, signs=True)
    captions = {r["image"]: r["conversations"][1]["value"] for r in load_records(align)}
    signs = {image: sketch_lm.SIGN.search(captions[image]) for image in scenes}
    assert any(signs.values()) and set(shapes_only) < set(scenes)
    for image, match in signs.items():
        if match is None:
            assert scenes[image] == shapes_only[image]
            continue
        row, text, colour = match.groups()
        words = tuple(text) if text.isdigit() else (text,)
        first = 3 * ("Top", "Middle", "Bottom").index(row)
        assert all(tuple(scenes[image][cell]) == (*words, colour) for cell in range(first, first + 3)), captions[image]
        assert len(scenes[image]) == 3 + captions[image].count(": a "), captions[image]
    # The sketches read off the captions are those the world drew from its scenes.
    drawn = load_cells(tiny_world / "sketch" / "cells.json")
    assert {image: {cell: list(words) for cell, words in grid.items()} for image, grid in scenes.items()} == drawn


def test_collect_reads_sketch_lm_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS / "existence_device"))
    log = tmp_path / "sketch_lm_fresh.log"
    log.write_text("{'align': (2361, 262)}\nstep 0 (0.527, {'align': 6.531, 'instruct': 6.414})\n"
                   "step 250 3.746 (0.5, {'align': 0.821, 'instruct': 0.718}) 27\n")
    parsed = importlib.import_module("collect").sketch_log(log)
    assert parsed == {"curve": [{"step": 250, "loss": 3.746, "held_out_pope_accuracy": 0.5,
                                 "held_out_align_loss": 0.821, "held_out_instruct_loss": 0.718}], "last_step": 250}


def test_a_sketch_sums_each_cells_word_embeddings_and_leaves_empty_cells_zero(
        tiny_world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sketch_lm = importlib.import_module("sketch_lm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_world / "tokenizer")
    torch.manual_seed(0)
    embed = torch.nn.Embedding(len(tokenizer), 8)
    cells = sketch_lm.sketch(embed, tokenizer, {0: ("red", "star"), 4: ("ring",)})
    ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in ("red", "star", "ring")]
    assert cells.shape == (9, 8)
    torch.testing.assert_close(cells[0], embed.weight[ids[0] + ids[1]].sum(0))
    torch.testing.assert_close(cells[4], embed.weight[ids[2]].sum(0))
    assert not cells[[1, 2, 3, 5, 6, 7, 8]].any()
    # Laid out for a /16 tower's 6 x 6 tokens, each cell fills its 2 x 2 positions (row-major).
    fine = sketch_lm.sketch(embed, tokenizer, {0: ("red", "star"), 4: ("ring",)}, side=6)
    assert fine.shape == (36, 8)
    for position in range(36):
        cell = (position // 6 // 2) * 3 + position % 6 // 2
        torch.testing.assert_close(fine[position], cells[cell])


def test_answer_source_probe_scores_the_first_token_of_every_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probe = importlib.import_module("answer_source_probe")
    labels = torch.tensor([-100, -100, 5, 1, -100, 7, 2, -100, 6, 1])
    logits = torch.zeros(10, 8)
    logits[1, 5] = 1.0  # first reply's first token: right
    logits[4, 3] = 1.0  # second reply starts with 7, the model prefers 3: wrong
    logits[7, 6] = 1.0  # third reply: right
    assert probe.first_token_picks(logits, labels) == [(0, True, False), (1, False, False), (2, True, False)]


def test_reading_stage_data_is_every_reading_question_as_one_turn(tiny_world: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probe = importlib.import_module("reading_probe")
    world = tmp_path / "world"  # a copy: the shared tiny world stays as `mllm world` wrote it
    (world / "stage_data").mkdir(parents=True)
    shutil.copy(tiny_world / "stage_data" / "instruct.json", world / "stage_data")
    instruct = load_records(world / "stage_data" / "instruct.json")
    asked = [(r["image"], r["conversations"][k]["value"].replace("<image>\n", ""), r["conversations"][k + 1]["value"])
             for r in instruct for k in range(0, len(r["conversations"]), 2)]
    expected = [(image, q, a) for image, q, a in asked if probe.READING.search(q)]
    assert probe.write_stage_data(world) == len(expected) > 0
    written = load_records(world / "stage_data" / "reading_single.json")
    assert [(r["image"], r["conversations"][0]["value"], r["conversations"][1]["value"]) for r in written] == [
        (image, "<image>\n" + q, a) for image, q, a in expected]
    assert {q.split("\n")[0].lower() for _, q, _ in expected} <= {
        "what is written in the image?", "what word is written in the image?", "what does the sign say?",
        "what number is written in the image?"}


def test_reading_probe_views_of_a_sign_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probe = importlib.import_module("reading_probe")
    rows = torch.arange(2 * 3 * 4, dtype=torch.float).view(2, 3, 4)  # two signs, three cells, width 4
    assert torch.equal(probe.view(rows, "row"), rows.flatten(1))
    assert torch.equal(probe.view(rows, "mean"), rows.mean(1))
    for i, name in enumerate(("left", "middle", "right")):
        assert torch.equal(probe.view(rows, name), rows[:, i])


def test_probes_group_a_finer_towers_patches_by_grid_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probe = importlib.import_module("encoder_probe")
    nine = torch.randn(2, 9, 5)
    assert torch.equal(probe.grid_cells(nine), nine)
    # A 6 x 6 grid whose patch (r, c) holds the value 10r + c in both channels: cell (i, j) gets patches
    # (2i + a, 2j + b) for a, b in 0, 1, whatever the channel order within the cell.
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    patches = (10 * rows + cols).flatten().float().view(1, 36, 1).expand(1, 36, 2)
    cells = probe.grid_cells(patches)
    assert cells.shape == (1, 9, 8)
    for i in range(3):
        for j in range(3):
            expected = {float(10 * (2 * i + a) + 2 * j + b) for a in (0, 1) for b in (0, 1)}
            assert set(cells[0, 3 * i + j].tolist()) == expected
    # Row by row within the cell: patches (2i, 2j), (2i, 2j + 1), (2i + 1, 2j), (2i + 1, 2j + 1).
    assert cells[0, 4, ::2].tolist() == [22.0, 23.0, 32.0, 33.0]
    with pytest.raises(ValueError, match="16 patches per image"):
        probe.grid_cells(torch.zeros(1, 16, 2))
