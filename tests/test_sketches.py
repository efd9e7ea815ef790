"""Scene sketches: what the world writes about them, how a sketch becomes embeddings, and sketch training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mllm.data.conversation import IGNORE_INDEX
from mllm.llm import LLMConfig, build_llm, load_tokenizer
from mllm.train_stages.language import LanguageConfig, pretrain_language
from mllm.train_stages.sketches import (
    REPEAT,
    SKETCH,
    SketchBatches,
    SketchConfig,
    SketchSet,
    load_cells,
    part_losses,
    sketch_embeddings,
)
from mllm.world.scene import Bar, Scene, Shape, Text
from mllm.world.sketches import scene_cells


def test_scene_cells_put_objects_in_their_cell_and_a_sign_in_its_row() -> None:
    scene = Scene("sign", shapes=[Shape("star", "red", "small", 7)], text=Text("42", "blue", 0))
    assert scene_cells(scene) == {7: ["red", "star"], 0: ["4", "2", "blue"], 1: ["4", "2", "blue"],
                                  2: ["4", "2", "blue"]}
    word = Scene("sign", text=Text("CAT", "green", 1))
    assert scene_cells(word) == {c: ["CAT", "green"] for c in (3, 4, 5)}
    assert scene_cells(Scene("chart", bars=[Bar("red", 3)])) is None


def test_world_writes_sketches_of_every_non_chart_training_image(tiny_world: Path) -> None:
    cells = load_cells(tiny_world / "sketch" / "cells.json")
    align = json.loads((tiny_world / "stage_data" / "align.json").read_text())
    captions = {r["image"]: r["conversations"][1]["value"] for r in align}
    assert set(cells) == {image for image, caption in captions.items() if not caption.startswith("A bar chart")}
    for image, grid in cells.items():
        for cell, words in grid.items():
            assert 0 <= cell < 9 and all(w in captions[image] or w.isdigit() for w in words)


def test_world_writes_one_turn_existence_and_reading_questions_that_its_scenes_answer(tiny_world: Path) -> None:
    cells = load_cells(tiny_world / "sketch" / "cells.json")
    existence = json.loads((tiny_world / "sketch" / "existence.json").read_text())
    answers = [r["conversations"][1]["value"] for r in existence]
    assert answers.count("yes") == answers.count("no") > 0
    for record in existence:
        question, answer = (t["value"] for t in record["conversations"])
        assert question.startswith("<image>\nIs there a ") and len(record["conversations"]) == 2
        shape = question.split("Is there a ")[1].split(" in the image")[0]
        present = any(shape in words for words in cells[record["image"]].values())
        assert answer == ("yes" if present else "no")
    reading = json.loads((tiny_world / "sketch" / "reading.json").read_text())
    assert reading
    for record in reading:
        answer = record["conversations"][1]["value"]
        row_words = [w for words in cells[record["image"]].values() for w in words]
        assert answer.upper() in {w.upper() for w in row_words} or "".join(row_words).find(answer) >= 0


@pytest.fixture(scope="module")
def tiny_lm(tiny_world: Path) -> tuple:
    cfg = LLMConfig(tokenizer=str(tiny_world / "tokenizer"), hidden_size=32, num_layers=1, num_heads=2,
                    num_kv_heads=2, intermediate_size=64)
    tokenizer = load_tokenizer(cfg)
    torch.manual_seed(0)
    return build_llm(cfg, tokenizer), tokenizer


def test_sketch_embeddings_sum_each_cells_word_embeddings_in_image_token_order(tiny_lm: tuple) -> None:
    model, _ = tiny_lm
    embed, image_id = model.get_input_embeddings(), 5
    input_ids = torch.tensor([[1, image_id, image_id, 7], [image_id, image_id, 8, 9]])
    sketch_ids = torch.tensor([[10, 11, 0], [12, 0, 0], [0, 0, 0], [13, 14, 15]])
    sketch_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.float)
    out = sketch_embeddings(embed, input_ids, image_id, sketch_ids, sketch_mask)
    w = embed.weight
    torch.testing.assert_close(out[0, 1], w[10] + w[11])
    torch.testing.assert_close(out[0, 2], w[12])
    torch.testing.assert_close(out[1, 0], torch.zeros_like(w[0]))
    torch.testing.assert_close(out[1, 1], w[13] + w[14] + w[15])
    torch.testing.assert_close(out[0, 3], w[7])


def test_part_losses_sum_each_parts_token_mean(tiny_lm: tuple) -> None:
    model, _ = tiny_lm
    torch.manual_seed(1)
    ids = torch.randint(10, 60, (4, 6))
    labels = ids.clone()
    labels[0, :4] = labels[2, :2] = IGNORE_INDEX
    parts = torch.tensor([SKETCH, SKETCH, REPEAT, REPEAT])
    logits = model(input_ids=ids).logits
    expected = sum(model(input_ids=ids[rows], labels=labels[rows]).loss for rows in (slice(0, 2), slice(2, 4)))
    torch.testing.assert_close(part_losses(logits, labels, parts), expected)


def sketch_batches(world: Path, tokenizer, **options) -> SketchBatches:
    cfg = SketchConfig(world=str(world), steps=20, **options)
    cells = load_cells(world / "sketch" / "cells.json")
    images = sorted(cells)
    held = set(images[:10])
    sets = {kind: SketchSet(path, fmt, world / "images", tokenizer, cells, held, cfg.side, 256) for kind, path, fmt in (
        ("align", world / "stage_data" / "align.json", "plain"),
        ("existence", world / "sketch" / "existence.json", "chat"))}
    words = sorted({w for grid in cells.values() for ws in grid.values() for w in ws})
    cell_ids = dict(zip(words, tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"], strict=True))
    return SketchBatches(sets, cells, cell_ids, None, None, cfg, 8, tokenizer.pad_token_id, seed=0)


def drawn(batches: SketchBatches, step: int) -> list[tuple[str, int]]:
    kind, indices, _ = batches.draw(step)
    return [(kind, i) for i in indices]


def test_sketch_batches_are_fixed_by_step_and_keep_held_out_images_out(tiny_world: Path, tiny_lm: tuple) -> None:
    _, tokenizer = tiny_lm
    batches = sketch_batches(tiny_world, tokenizer, share=1.0, existence_weight=0.5, reading_weight=0.0,
                             existence_curriculum=[5])
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for step in range(20):
        batch = batches[step]
        assert torch.equal(batch["input_ids"], batches[step]["input_ids"])
        assert (batch["part"] == SKETCH).all() and len(batch["part"]) == 8
        assert batch["sketch_ids"].shape[0] == int((batch["input_ids"] == image_id).sum()) == 8 * 9
    for kind in batches.sets.values():
        assert not {kind.images[i] for i in kind.train} & {kind.images[i] for i in kind.held_out}
    existence = batches.sets["existence"]
    one_object = {existence.images[i] for i in batches.small_scenes[0]}
    assert one_object and all(len(batches.cells[image]) == 1 for image in one_object)
    early = {batches.sets[k].images[i] for step in range(5) for k, i in drawn(batches, step) if k == "existence"}
    later = {batches.sets[k].images[i] for step in range(5, 20) for k, i in drawn(batches, step) if k == "existence"}
    assert early and early <= one_object and later - one_object


def test_existence_steps_ask_both_questions_of_each_drawn_image(tiny_world: Path, tiny_lm: tuple) -> None:
    _, tokenizer = tiny_lm
    batches = sketch_batches(tiny_world, tokenizer, share=1.0, existence_weight=1.0, reading_weight=0.0,
                             existence_curriculum=[5], existence_pairs=True)
    existence = batches.sets["existence"]
    for step in (0, 10):
        kind, indices, _ = batches.draw(step)
        assert kind == "existence" and len(indices) == len(set(indices)) == 8
        images = [existence.images[i] for i in indices]
        assert all(images.count(image) == 2 for image in images)
        for image in set(images):
            answers = [next(t for t in existence.data.samples[i].labels if t != IGNORE_INDEX)
                       for i, im in zip(indices, images, strict=True) if im == image]
            assert answers[0] != answers[1]  # "yes" about a present shape, "no" about an absent one
    unpaired = sketch_batches(tiny_world, tokenizer, share=1.0, existence_weight=1.0, reading_weight=0.0)
    images = [existence.images[i] for i in unpaired.draw(10)[1]]
    assert len(images) == 8 and len(set(images)) > 4


def test_sketch_cell_tokens_spread_a_cell_over_a_16_towers_two_by_two(tiny_world: Path, tiny_lm: tuple) -> None:
    _, tokenizer = tiny_lm
    small, large = (sketch_batches(tiny_world, tokenizer, side=side) for side in (3, 6))
    image = sorted(small.cells)[0]
    ids3, _ = small.cell_tokens([image])
    ids6, _ = large.cell_tokens([image])
    grid3 = ids3.view(3, 3, -1)
    for r in range(6):
        for c in range(6):
            assert torch.equal(ids6[r * 6 + c][: ids3.shape[1]], grid3[r // 2, c // 2])


def test_sketch_config_refuses_what_cannot_train(tiny_world: Path) -> None:
    with pytest.raises(ValueError, match="sketch.world"):
        SketchConfig(steps=5).check()
    with pytest.raises(ValueError, match="sketch.steps"):
        SketchConfig(world="w", steps=-1).check()
    with pytest.raises(ValueError, match="share"):
        SketchConfig(world="w", steps=5, share=0.8, text_share=0.5).check()
    with pytest.raises(ValueError, match="existence_weight"):
        SketchConfig(world="w", steps=5, existence_weight=0.7, reading_weight=0.5).check()
    with pytest.raises(ValueError, match="existence_curriculum"):
        SketchConfig(world="w", steps=5, existence_curriculum=[300, 200]).check()
    with pytest.raises(ValueError, match="side"):
        SketchConfig(world="w", steps=5, side=4).check()


def test_missing_or_malformed_cells_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cells.json"):
        load_cells(tmp_path / "cells.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"train/1.jpg": ["red"]}')
    with pytest.raises(ValueError, match="bad.json"):
        load_cells(bad)


def test_sketch_warm_up_learns_and_scores_held_out_questions(tmp_path: Path, tiny_world: Path) -> None:
    text = tiny_world / "text"
    llm = LLMConfig(tokenizer=str(tiny_world / "tokenizer"), hidden_size=64, num_layers=2, num_heads=2,
                    num_kv_heads=2, intermediate_size=128)
    cfg = LanguageConfig(out=str(tmp_path / "lm"), corpus=str(text / "corpus.txt"),
                         conversations=[str(text / "reading.json")], llm=llm, batch_size=16, lr=3e-3,
                         lr_schedule="constant", warmup_ratio=0.0, logging_steps=1,
                         sketch=SketchConfig(world=str(tiny_world), steps=40, text_share=0.25,
                                             existence_curriculum=[10]))
    summary = pretrain_language(cfg)
    assert summary["steps"] == 40 and summary["final_loss"] < 0.7 * summary["first_loss"]
    held = summary["held_out"]
    assert held["existence_questions"] > 0 and 0.0 <= held["existence"] <= 1.0
    assert (tmp_path / "lm" / "model" / "config.json").is_file()
