"""The synthetic world: determinism, file formats (shards, LLaVA JSON, parquet benchmarks), held-out pairs."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import re
import subprocess
import sys
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from transformers import AutoTokenizer

from mllm.data.images import AugmentConfig, ImageConfig
from mllm.data.parquet import decode_image
from mllm.data.shards import CaptionShards, ShardConfig
from mllm.world import language
from mllm.world.build import WorldConfig, build_world
from mllm.world.render import render
from mllm.world.scene import (
    COLOURS,
    KINDS,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXT_COLOURS,
    WORDS,
    Holdout,
    Scene,
    Shape,
    sample_scene,
)

BENCHMARK_KEYS = ("textvqa", "chartqa", "ocrbench", "mme", "seed", "sqa_img", "gqa", "pope")
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
SINGLE_WORD = "\nAnswer the question with a single word."
OPTION_LETTER = "\nAnswer with the option's letter from the given choices directly."
# Dense captions are region-first: "Top left: a large red star.", "Middle: the word STOP in red.",
# "A bar chart with three bars: red 3, blue 5, green 1."
REGION = "|".join(p.capitalize() for p in POSITIONS)
SHAPE_PHRASE = re.compile(rf"\b(?:{REGION}): a (small|large) (\w+) (\w+)\.")
WORD_PHRASE = re.compile(r"\b(?:Top|Middle|Bottom): the (?:word|number) (\w+) in (\w+)\.")
BAR_LIST = re.compile(r"\bA bar chart with \w+ bars?: ([^.]+)\.")
BAR_PHRASE = re.compile(r"\b(\w+) (\d+)\b")


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _held_out_pairs(holdout: Holdout, scene: Scene) -> list[tuple]:
    """Independent of Holdout.held_out_in: every held-out pair the scene shows."""
    found = [(s.shape, s.colour) for s in scene.shapes if (s.shape, s.colour) in holdout.shape_colour]
    if scene.text is not None and (scene.text.text, scene.text.colour) in holdout.word_colour:
        found.append((scene.text.text, scene.text.colour))
    return found + [(b.colour, b.value) for b in scene.bars if (b.colour, b.value) in holdout.bar_value]


def _caption_pairs(caption: str) -> tuple[set, set, set]:
    shapes = {(shape, colour) for _, colour, shape in SHAPE_PHRASE.findall(caption)}
    words = {(word, colour) for word, colour in WORD_PHRASE.findall(caption)}
    bars = {(colour, int(value)) for bar_list in BAR_LIST.findall(caption) for colour, value in
            BAR_PHRASE.findall(bar_list)}
    return shapes, words, bars


# --- determinism --------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_world_across_processes(tiny_world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    script = (
        "from mllm.world.build import WorldConfig, build_world\n"
        f"build_world(WorldConfig(out={str(again)!r}, seed=0, scale='tiny', shard_size=100))\n"
    )
    # A different hash seed: set iteration order must not leak into the output.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
    first, second = _hashes(tiny_world), _hashes(again)
    assert set(first) == set(second)
    assert any(name.startswith("tokenizer/") for name in first)
    assert any(name.startswith("shards/") for name in first)
    differing = sorted(name for name in first if first[name] != second[name])
    # The manifest leaves out the output folder, so even it is identical.
    assert differing == []
    assert "out" not in json.loads((tiny_world / "world.json").read_text())["config"]


def test_different_seed_gives_different_stage_data(tiny_world: Path, tmp_path: Path) -> None:
    other = tmp_path / "seed1"
    manifest = build_world(WorldConfig(out=str(other), seed=1, scale="tiny", shard_size=100))
    for name in ("stage_data/align.json", "stage_data/instruct.json", "benchmarks/gqa.parquet",
                 "shards/pretrain-00000.tar", "images/train/000000.jpg"):
        assert (tiny_world / name).read_bytes() != (other / name).read_bytes(), name
    assert manifest["holdout"] != json.loads((tiny_world / "world.json").read_text())["holdout"]


def test_unknown_scale_is_a_value_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'enormous'"):
        build_world(WorldConfig(out=str(tmp_path / "w"), scale="enormous"))
    assert not (tmp_path / "w" / "world.json").exists()


def test_cli_world_with_unknown_scale_reports_the_scale(tmp_path: Path) -> None:
    from mllm.cli import main

    with pytest.raises(SystemExit) as info:
        main(["world", "--out", str(tmp_path / "w"), "--scale", "enormous"])
    assert "enormous" in str(info.value.code)
    assert not (tmp_path / "w" / "shards").exists()


# --- shards ---------------------------------------------------------------------------------------------


def test_shards_have_img2dataset_layout(tiny_world: Path) -> None:
    size = json.loads((tiny_world / "world.json").read_text())["config"]["image_size"]
    shards = sorted((tiny_world / "shards").glob("*.tar"))
    assert [p.name for p in shards] == ["pretrain-00000.tar", "pretrain-00001.tar", "pretrain-00002.tar"]
    keys_per_shard = []
    for shard in shards:
        members: dict[str, dict[str, bytes]] = defaultdict(dict)
        with tarfile.open(shard) as tar:
            for info in tar.getmembers():
                key, suffix = info.name.split(".", 1)
                members[key][suffix] = tar.extractfile(info).read()
        keys_per_shard.append(len(members))
        for key, files in members.items():
            assert set(files) == {"jpg", "txt", "json"}, key
            meta = json.loads(files["json"])
            assert isinstance(meta["org_caption"], str) and meta["org_caption"]
            assert meta["re_caption"] == files["txt"].decode()
            assert len(meta["org_caption"]) < len(meta["re_caption"])
            with Image.open(io.BytesIO(files["jpg"])) as image:
                assert image.format == "JPEG" and image.size == (size, size)
    assert keys_per_shard == [100, 100, 40]


def _world_tokenize(world: Path):
    tokenizer = AutoTokenizer.from_pretrained(world / "tokenizer")
    return tokenizer, lambda text: tokenizer(text, return_tensors="pt")["input_ids"][0]


def _no_augment() -> AugmentConfig:
    return AugmentConfig(crop_min_area=1.0, jitter_strength=0.0, grayscale_prob=0.0)


def test_caption_shards_yield_every_training_image_with_its_dense_caption(tiny_world: Path) -> None:
    tokenizer, tokenize = _world_tokenize(tiny_world)
    cfg = ShardConfig(shards=str(tiny_world / "shards"), augment=_no_augment())
    dataset = CaptionShards(cfg, ImageConfig(size=112), tokenize, train=False)
    items = list(dataset)
    align = json.loads((tiny_world / "stage_data" / "align.json").read_text())
    assert len(items) == len(align) == 240
    assert dataset.bad.total == 0
    for item, record in zip(items, align, strict=True):
        assert item["pixel_values"].shape == (3, 112, 112)
        assert tokenizer.decode(item["caption_ids"]) == record["conversations"][1]["value"]


def test_caption_shards_in_training_mode_repeat_past_one_epoch(tiny_world: Path) -> None:
    _, tokenize = _world_tokenize(tiny_world)
    cfg = ShardConfig(shards=str(tiny_world / "shards"), shuffle_buffer=50, augment=_no_augment())
    items = list(itertools.islice(CaptionShards(cfg, ImageConfig(size=64), tokenize, train=True), 260))
    assert len(items) == 260
    assert all(item["pixel_values"].shape == (3, 64, 64) for item in items)


def test_caption_field_json_org_caption_yields_the_short_caption(tiny_world: Path) -> None:
    tokenizer, tokenize = _world_tokenize(tiny_world)
    with tarfile.open(tiny_world / "shards" / "pretrain-00000.tar") as tar:
        meta = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    cfg = ShardConfig(shards=str(tiny_world / "shards" / "pretrain-00000.tar"),
                      caption_field="json:org_caption", augment=_no_augment())
    items = list(CaptionShards(cfg, ImageConfig(size=112), tokenize, train=False))
    assert [tokenizer.decode(item["caption_ids"]) for item in items] == [m["org_caption"] for m in meta]
    assert any(m["org_caption"] != m["re_caption"] for m in meta)


# --- LLaVA-format stage data ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["align", "instruct"])
def test_stage_data_records_are_llava_conversations(tiny_world: Path, name: str) -> None:
    records = json.loads((tiny_world / "stage_data" / f"{name}.json").read_text())
    assert isinstance(records, list)
    assert len([r for r in records if "-" not in r["id"]]) == 240  # one conversation an image; the rest suffixed
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
        assert set(record) == {"id", "image", "conversations"}
        assert (tiny_world / "images" / record["image"]).is_file(), record["id"]
        turns = record["conversations"]
        assert len(turns) >= 2 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(isinstance(t["value"], str) and t["value"] for t in turns)
        assert turns[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in turns) == 1


def _family(question: str, answer: str) -> str:
    """Which benchmark family a training turn comes from, judged by its prompt and answer shape."""
    if question == "Describe the image in detail.":
        return "describe"
    if question == "what is written in the image?":
        return "ocrbench"
    if question.endswith(SINGLE_WORD):
        assert re.fullmatch(r"\d|[a-z]+", answer), answer
        assert question.startswith(("What is the value of the", "Which colour is the tallest bar?"))
        return "chartqa"
    if question.endswith(OPTION_LETTER):
        assert answer in ("A", "B", "C", "D"), answer
        stem = question.removeprefix("Context: ").split("\n")
        stem = stem[1] if question.startswith("Context: ") else stem[0]
        options = re.findall(r"\n([A-D])\. ", question)
        if stem.startswith("Which"):
            assert 2 <= len(options) <= 4 and answer in options
            return "sqa_img"
        assert options == ["A", "B", "C", "D"] and not question.startswith("Context: ")
        return "seed"
    if question.endswith(SHORT_ANSWER):
        body = question[: -len(SHORT_ANSWER)]
        if answer in ("Yes", "No"):
            assert body.startswith(("Is ", "Are ")) and "Please answer yes or no" not in body
            return "mme"
        if body in ("What word is written in the image?", "What does the sign say?",
                    "What number is written in the image?"):
            assert answer == answer.lower() and answer.strip()
            return "textvqa"
        if re.fullmatch(r"Is there an? \w+ in the image\?", body):
            assert answer in ("yes", "no")
            return "pope"
        assert answer in (*SHAPES, *COLOURS, *SIZES, "yes", "no"), (body, answer)
        return "gqa"
    raise AssertionError(f"unrecognised training question {question!r} -> {answer!r}")


def test_instruct_mix_covers_all_eight_question_families(tiny_world: Path) -> None:
    records = json.loads((tiny_world / "stage_data" / "instruct.json").read_text())
    families: Counter[str] = Counter()
    for record in records:
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            families[_family(human["value"].removeprefix("<image>\n"), gpt["value"])] += 1
    assert set(BENCHMARK_KEYS) <= set(families), families
    assert set(families) <= {*BENCHMARK_KEYS, "describe"}


def test_instruct_mix_yes_no_answers_are_balanced(tiny_world: Path) -> None:
    """POPE- and MME-style questions come in yes/no pairs; training on a tilted mix teaches "always yes"."""
    records = json.loads((tiny_world / "stage_data" / "instruct.json").read_text())
    answers = Counter(turn["value"].lower() for record in records for turn in record["conversations"][1::2]
                      if turn["value"].lower() in ("yes", "no"))
    assert sum(answers.values()) > 100, answers
    assert 0.4 < answers["yes"] / sum(answers.values()) < 0.6, answers


def test_yes_no_pairs_never_share_a_conversation(tiny_world: Path) -> None:
    """MME and POPE ask one "yes" and one "no" question about an image; in one conversation the second answer
    could be read off the first, so the second goes to a one-turn record of its own (same image)."""
    records = json.loads((tiny_world / "stage_data" / "instruct.json").read_text())
    partners = 0
    for record in records:
        turns = record["conversations"]
        asked = Counter(_family(h["value"].removeprefix("<image>\n"), g["value"])
                        for h, g in zip(turns[::2], turns[1::2], strict=True))
        assert asked["mme"] <= 1 and asked["pope"] <= 1, record["id"]
        if re.search(r"-pair\d$", record["id"]):
            partners += 1
            assert len(turns) == 2 and set(asked) <= {"mme", "pope"}, record
            assert record["image"] == f"train/{record['id'].rsplit('-', 1)[0]}.jpg"
    assert partners > 10


def test_instruct_mix_has_standalone_descriptions_at_the_configured_share(tiny_world: Path) -> None:
    """About `describe_prob` (0.5 by default) of the images also get a one-turn detailed description whose
    answer is the image's dense caption, as in the alignment data."""
    instruct = json.loads((tiny_world / "stage_data" / "instruct.json").read_text())
    captions = {r["id"]: r["conversations"][1]["value"]
                for r in json.loads((tiny_world / "stage_data" / "align.json").read_text())}
    described = [r for r in instruct if r["id"].endswith("-describe")]
    assert 0.35 * 240 < len(described) < 0.65 * 240
    for record in described:
        key = record["id"].removesuffix("-describe")
        assert record["image"] == f"train/{key}.jpg"
        assert [t["value"] for t in record["conversations"]] == ["<image>\nDescribe the image in detail.",
                                                                  captions[key]]


def test_align_data_is_describe_prompt_with_dense_caption(tiny_world: Path) -> None:
    align = json.loads((tiny_world / "stage_data" / "align.json").read_text())
    with tarfile.open(tiny_world / "shards" / "pretrain-00000.tar") as tar:
        txt = {m.name.removesuffix(".txt"): tar.extractfile(m).read().decode()
               for m in tar.getmembers() if m.name.endswith(".txt")}
    for record in align:
        assert record["conversations"][0]["value"] == "<image>\nDescribe the image."
        if record["id"] in txt:
            assert record["conversations"][1]["value"] == txt[record["id"]]
    assert len(txt) == 100


# --- benchmarks -----------------------------------------------------------------------------------------

LAYOUT_COLUMNS = {
    "textvqa": {"question_id", "question", "answers", "ocr_tokens", "image"},
    "chartqa": {"question", "answer", "type", "image"},
    "ocrbench": {"question", "answer", "dataset", "question_type", "image"},
    "mme": {"question_id", "question", "answer", "category", "image"},
    "seed": {"question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer", "data_type",
             "image"},
    "sqa_img": {"question", "choices", "answer", "hint", "image"},
    "gqa": {"question_id", "question", "answer", "imageId"},
    "pope": {"question_id", "question", "answer", "category", "image"},
}


@pytest.mark.parametrize("key", BENCHMARK_KEYS)
def test_benchmark_parquet_has_lmms_eval_columns_and_hf_image_features(tiny_world: Path, key: str) -> None:
    table = pq.read_table(tiny_world / "benchmarks" / f"{key}.parquet")
    assert LAYOUT_COLUMNS[key] <= set(table.column_names)
    assert table.num_rows >= 20
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert set(features) == set(table.column_names)
    if key == "seed":
        assert features["image"] == {"_type": "Sequence", "feature": {"_type": "Image"}}
    else:
        assert features["image"] == {"_type": "Image"}
    size = json.loads((tiny_world / "world.json").read_text())["config"]["image_size"]
    rows = table.to_pylist()
    cells = [row["image"][0] if key == "seed" else row["image"] for row in rows]
    for cell in cells[:4]:
        image = decode_image(cell)
        assert image.mode == "RGB" and image.size == (size, size)
    assert all(isinstance(row["question"], str) and row["question"] for row in rows)


def _rows(world: Path, key: str) -> list[dict]:
    return pq.read_table(world / "benchmarks" / f"{key}.parquet").to_pylist()


def test_textvqa_rows(tiny_world: Path) -> None:
    rows = _rows(tiny_world, "textvqa")
    assert len({r["question_id"] for r in rows}) == len(rows)
    for row in rows:
        assert isinstance(row["question_id"], int)
        assert len(row["answers"]) == 10 and all(isinstance(a, str) and a for a in row["answers"])
        assert [t.lower() for t in row["ocr_tokens"]] == [row["answers"][0]]


def test_chartqa_and_ocrbench_rows(tiny_world: Path) -> None:
    for row in _rows(tiny_world, "chartqa"):
        assert row["type"] in ("human_test", "augmented_test")
        assert isinstance(row["answer"], str) and (row["answer"].isdigit() or row["answer"] in COLOURS)
    for row in _rows(tiny_world, "ocrbench"):
        assert isinstance(row["answer"], list) and len(row["answer"]) == 1
        assert row["answer"][0] in WORDS or row["answer"][0].isdigit()
        assert row["question_type"] in ("Regular Text Recognition", "Digit String Recognition")
        assert isinstance(row["dataset"], str)


def test_mme_has_one_yes_and_one_no_per_question_id(tiny_world: Path) -> None:
    rows = _rows(tiny_world, "mme")
    by_id: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_id[row["question_id"]].append(row)
        assert row["question"].endswith(" Please answer yes or no.")
    for question_id, pair in by_id.items():
        assert sorted(r["answer"] for r in pair) == ["No", "Yes"], question_id
        assert pair[0]["category"] == pair[1]["category"]
        assert question_id.startswith(pair[0]["category"] + "/") and question_id.endswith(".jpg")
        assert pair[0]["image"] == pair[1]["image"]


def test_seed_rows_have_letter_answers_and_image_lists(tiny_world: Path) -> None:
    for row in _rows(tiny_world, "seed"):
        assert isinstance(row["image"], list) and len(row["image"]) == 1
        assert row["answer"] in ("A", "B", "C", "D")
        choices = [row[f"choice_{c}"] for c in "abcd"]
        assert len(set(choices)) == 4
        assert row["data_type"] == "image"


@pytest.mark.parametrize("family", ["seed", "sqa_img"])
def test_multiple_choice_answers_take_every_position_in_turn(tiny_world: Path, family: str) -> None:
    """Balanced gold positions: the best constant answer scores 1/k, not what a lucky draw gives one letter."""
    by_count: dict[int, Counter[int]] = defaultdict(Counter)
    rows = _rows(tiny_world, family)
    for row in rows:
        if family == "seed":
            by_count[4]["ABCD".index(row["answer"])] += 1
        else:
            by_count[len(row["choices"])][row["answer"]] += 1
    for k, counts in by_count.items():
        spread = [counts[i] for i in range(k)]
        assert max(spread) - min(spread) <= 1, (k, spread)
    assert len(rows) >= 20


def test_sqa_img_answer_indexes_choices(tiny_world: Path) -> None:
    for row in _rows(tiny_world, "sqa_img"):
        assert isinstance(row["answer"], int)
        assert 2 <= len(row["choices"]) <= 4 and 0 <= row["answer"] < len(row["choices"])
        assert isinstance(row["hint"], str)


def test_gqa_and_pope_rows(tiny_world: Path) -> None:
    gqa = _rows(tiny_world, "gqa")
    assert len({r["question_id"] for r in gqa}) == len(gqa)
    assert all(r["question_id"].startswith(r["imageId"]) for r in gqa)
    pope = _rows(tiny_world, "pope")
    assert {r["category"] for r in pope} == {"adversarial", "popular", "random"}
    assert Counter(r["answer"] for r in pope) == {"yes": len(pope) // 2, "no": len(pope) // 2}
    assert len({r["question_id"] for r in pope}) == len(pope)


# --- held-out combinations ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sample_scene_keeps_held_out_pairs_out_of_training(kind: str) -> None:
    holdout = Holdout.sample(0)
    rng = random.Random(7)
    for _ in range(300):
        assert _held_out_pairs(holdout, sample_scene(rng, kind, holdout, held_out=False)) == []
    for _ in range(300):
        assert _held_out_pairs(holdout, sample_scene(rng, kind, holdout, held_out=True)) != []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holdout_gives_every_item_one_partner_spread_evenly(seed: int) -> None:
    holdout = Holdout.sample(seed)
    for pairs, items, partners in ((holdout.shape_colour, SHAPES, list(COLOURS)),
                                   (holdout.word_colour, WORDS, TEXT_COLOURS),
                                   (holdout.bar_value, list(COLOURS), range(1, 10))):
        assert sorted(item for item, _ in pairs) == sorted(items)
        uses = Counter(partner for _, partner in pairs)
        assert set(uses) <= set(partners)
        floor = len(items) // len(partners)
        assert all(floor <= n <= floor + 1 for n in uses.values()), uses
        assert len(uses) == min(len(items), len(partners))


def test_holdout_differs_by_seed_and_matches_manifest(tiny_world: Path) -> None:
    holdout = Holdout.sample(0)
    assert holdout != Holdout.sample(1)
    manifest = json.loads((tiny_world / "world.json").read_text())
    assert {tuple(p) for p in manifest["holdout"]["shape_colour"]} == holdout.shape_colour
    assert {tuple(p) for p in manifest["holdout"]["word_colour"]} == holdout.word_colour
    assert {tuple(p) for p in manifest["holdout"]["bar_value"]} == holdout.bar_value
    assert manifest["train_images"] == 240
    assert set(manifest["benchmark_rows"]) == set(BENCHMARK_KEYS)


def test_caption_parser_sees_held_out_pairs_in_benchmark_scenes() -> None:
    """The parser used below must catch what it is looking for, or the next test proves nothing."""
    holdout = Holdout.sample(0)
    rng = random.Random(3)
    for kind in KINDS:
        for _ in range(20):
            scene = sample_scene(rng, kind, holdout, held_out=True)
            shapes, words, bars = _caption_pairs(language.dense_caption(scene))
            found = shapes & holdout.shape_colour or words & holdout.word_colour or bars & holdout.bar_value
            assert found, language.dense_caption(scene)


def test_align_captions_never_mention_a_held_out_pair(tiny_world: Path) -> None:
    holdout = Holdout.sample(0)
    align = json.loads((tiny_world / "stage_data" / "align.json").read_text())
    seen_shapes, seen_words, seen_bars = set(), set(), set()
    for record in align:
        shapes, words, bars = _caption_pairs(record["conversations"][1]["value"])
        assert not shapes & holdout.shape_colour, record
        assert not words & holdout.word_colour, record
        assert not bars & holdout.bar_value, record
        seen_shapes |= shapes
        seen_words |= words
        seen_bars |= bars
    # The parse is not vacuous: the training captions name plenty of pairs.
    assert len(seen_shapes) > 30 and len(seen_words) > 10 and len(seen_bars) > 20


# --- scenes and rendering -------------------------------------------------------------------------------


def test_scene_vocabulary() -> None:
    assert len(SHAPES) >= 10 and len(set(SHAPES)) == len(SHAPES)
    assert len(COLOURS) == 8
    assert all(len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) for rgb in COLOURS.values())
    assert len(SIZES) == 2
    assert len(POSITIONS) == 9 and len(set(POSITIONS)) == 9


@pytest.mark.parametrize("size", [48, 112, 160])
def test_render_gives_rgb_image_of_requested_size(size: int) -> None:
    holdout = Holdout.sample(0)
    rng = random.Random(size)
    for kind in KINDS:
        image = render(sample_scene(rng, kind, holdout, held_out=False), size, rng)
        assert image.mode == "RGB" and image.size == (size, size)


@pytest.mark.parametrize(("shape", "cell"), [("square", 4), ("circle", 0), ("diamond", 8), ("star", 2)])
def test_render_draws_a_large_shape_in_its_colour_at_its_cell(shape: str, cell: int) -> None:
    scene = Scene("objects", shapes=[Shape(shape, "blue", "large", cell)])
    image = render(scene, 120, random.Random(0))
    cx, cy = (cell % 3 + 0.5) * 40, (cell // 3 + 0.5) * 40
    assert image.getpixel((round(cx), round(cy))) == COLOURS["blue"]
    # An empty cell shows the background, not the shape's colour.
    empty = (cell + 1) % 9
    assert image.getpixel((round((empty % 3 + 0.5) * 40), round((empty // 3 + 0.5) * 40))) != COLOURS["blue"]


def test_render_is_deterministic_for_an_rng_seed() -> None:
    scene = sample_scene(random.Random(1), "sign", Holdout.sample(0), held_out=False)
    assert render(scene, 96, random.Random(5)).tobytes() == render(scene, 96, random.Random(5)).tobytes()


def test_render_variation_is_seeded_noisy_and_moves_objects_off_centre() -> None:
    scene = Scene("objects", shapes=[Shape("square", "blue", "large", 4)])
    plain = [render(scene, 96, random.Random(seed)) for seed in range(20)]
    varied = [render(scene, 96, random.Random(seed), variation=1.0) for seed in range(20)]
    assert varied[3].tobytes() == render(scene, 96, random.Random(3), variation=1.0).tobytes()
    corner = [(x, y) for x in range(4) for y in range(4)]  # background only

    def spread(image: Image.Image) -> float:
        values = [sum(image.getpixel(p)) for p in corner]
        return max(values) - min(values)

    assert max(map(spread, plain)) == 0 and min(map(spread, varied)) > 10

    def centre(image: Image.Image) -> tuple[float, float]:
        blue = [(x, y) for x in range(96) for y in range(96) if image.getpixel((x, y))[2] > 150
                and image.getpixel((x, y))[0] < 100]
        return sum(x for x, _ in blue) / len(blue), sum(y for _, y in blue) / len(blue)

    def offset(images: list[Image.Image]) -> float:
        return max(max(abs(x - 47.5), abs(y - 47.5)) for x, y in map(centre, images))

    assert offset(plain) < 32 * 0.08 < 32 * 0.1 < offset(varied)


def test_render_rejects_variation_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="variation must be in"):
        render(Scene("objects"), 96, random.Random(0), variation=1.5)


def test_build_world_rejects_variation_outside_unit_interval_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"variation must be in \[0, 1\], got -0.5"):
        build_world(WorldConfig(out=str(tmp_path / "w"), scale="tiny", variation=-0.5))
    assert not (tmp_path / "w").exists()
