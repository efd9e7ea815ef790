"""The data layer: parquet tables, webdataset caption shards, image preprocessing, LLaVA-format stage data."""

from __future__ import annotations

import io
import itertools
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from mllm.data.conversation import IGNORE_INDEX
from mllm.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    ImageConfig,
    augment,
    random_resized_crop,
    to_tensor,
)
from mllm.data.llava_json import ConversationDataset, collate
from mllm.data.parquet import decode_image, encode_image, read_table, write_table
from mllm.data.shards import CaptionShards, ShardConfig, resolve_shards
from mllm.llm import LLMConfig, load_tokenizer
from mllm.train_stages.language import LanguageConfig, LineCorpus, RepeatedWords, pretrain_language


def _image(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# --- parquet --------------------------------------------------------------------------------------------


def test_parquet_round_trip_with_embedded_images_and_image_lists(tmp_path: Path) -> None:
    red, blue = _image((250, 0, 0)), _image((0, 0, 250), (20, 10))
    rows = [
        {"question_id": 1, "question": "q1", "answers": ["a", "b"], "image": encode_image(red),
         "frames": [encode_image(red), encode_image(blue)]},
        {"question_id": 2, "question": "q2", "answers": [], "image": encode_image(blue),
         "frames": [encode_image(blue)]},
    ]
    path = tmp_path / "sub" / "bench.parquet"
    write_table(rows, path, image_columns=("image", "frames"))
    assert not list(path.parent.glob("*.tmp"))
    back = read_table(path)
    assert [r["question_id"] for r in back] == [1, 2]
    assert [r["answers"] for r in back] == [["a", "b"], []]
    assert back[0]["image"]["bytes"] == rows[0]["image"]["bytes"]
    assert decode_image(back[1]["image"]).size == (20, 10)
    assert [decode_image(c).size for c in back[0]["frames"]] == [(32, 32), (20, 10)]
    r, g, b = decode_image(back[0]["frames"][0]).getpixel((16, 16))
    assert r > 230 and g < 20 and b < 20

    schema = pa.parquet.read_schema(path)
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert features["frames"]["feature"] == {"_type": "Image"}
    assert features["question_id"] == {"_type": "Value", "dtype": "int64"}
    assert features["question"] == {"_type": "Value", "dtype": "string"}


def test_write_table_overwrites_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    write_table([{"x": 1, "image": encode_image(_image((0, 0, 0)))}], path)
    write_table([{"x": 2, "image": encode_image(_image((0, 0, 0)))}], path)
    assert [r["x"] for r in read_table(path)] == [2]


def test_read_table_of_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_table(missing)


def test_read_table_of_corrupt_file_is_value_error_naming_it(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(ValueError, match="corrupt.parquet"):
        read_table(corrupt)


def test_read_table_reads_a_save_to_disk_folder(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    folder.mkdir()
    cells = [encode_image(_image((0, 200, 0))), encode_image(_image((0, 0, 200)))]
    table = pa.table({
        "question": ["a", "b"],
        "image": pa.array(cells, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    })
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "state.json").write_text("{}")
    rows = read_table(folder)
    assert [r["question"] for r in rows] == ["a", "b"]
    assert decode_image(rows[1]["image"]).getpixel((5, 5))[2] > 180


def test_read_table_of_folder_without_arrow_shards_is_value_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        read_table(tmp_path / "empty")


def test_decode_image_from_path_cell_and_bad_cell(tmp_path: Path) -> None:
    _image((10, 20, 30)).save(tmp_path / "x.png")
    assert decode_image({"bytes": None, "path": "x.png"}, base=tmp_path).getpixel((0, 0)) == (10, 20, 30)
    assert decode_image(Image.new("L", (4, 4), 7)).mode == "RGB"
    with pytest.raises(ValueError):
        decode_image({"bytes": None, "path": None})


# --- webdataset shards ----------------------------------------------------------------------------------


def _write_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples.items():
            for suffix, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def _mixed_shard(folder: Path) -> Path:
    good = _jpeg(_image((200, 30, 30)))
    shard = folder / "shard-00000.tar"
    _write_shard(shard, {
        "s0": {"jpg": good, "txt": b"first caption"},
        "s1": {"jpg": b"\xff\xd8 definitely not a jpeg", "txt": b"corrupt image"},
        "s2": {"jpg": good, "json": b'{"org_caption": "no txt here"}'},
        "s3": {"jpg": good, "txt": b"last caption"},
    })
    return shard


def _char_tokenize(text: str) -> torch.Tensor:
    return torch.tensor([ord(c) for c in text])


def _decode_chars(ids: torch.Tensor) -> str:
    return "".join(chr(i) for i in ids.tolist())


def test_lenient_shards_skip_and_count_bad_samples(tmp_path: Path) -> None:
    _mixed_shard(tmp_path)
    cfg = ShardConfig(shards=str(tmp_path), augment=AugmentConfig(crop_min_area=1.0, jitter_strength=0.0,
                                                                  grayscale_prob=0.0))
    dataset = CaptionShards(cfg, ImageConfig(size=16), _char_tokenize, train=False)
    items = list(itertools.islice(dataset, 10))
    assert [_decode_chars(item["caption_ids"]) for item in items] == ["first caption", "last caption"]
    assert all(item["pixel_values"].shape == (3, 16, 16) for item in items)
    assert dataset.bad.total == 2


def test_lenient_shards_in_training_mode_keep_streaming_past_bad_samples(tmp_path: Path) -> None:
    _mixed_shard(tmp_path)
    cfg = ShardConfig(shards=str(tmp_path), shuffle_buffer=1)
    dataset = CaptionShards(cfg, ImageConfig(size=16), _char_tokenize, train=True)
    items = list(itertools.islice(dataset, 6))
    assert {_decode_chars(item["caption_ids"]) for item in items} == {"first caption", "last caption"}
    # No shuffling: the sixth good item ends the third pass, after that pass's two bad samples.
    assert dataset.bad.total == 6


@pytest.mark.parametrize(("caption_field", "key"), [("txt", "s1"), ("json:org_caption", "s0")])
def test_strict_shards_raise_naming_shard_and_key(tmp_path: Path, caption_field: str, key: str) -> None:
    shard = _mixed_shard(tmp_path)
    cfg = ShardConfig(shards=str(shard), caption_field=caption_field, strict=True)
    dataset = CaptionShards(cfg, ImageConfig(size=16), _char_tokenize, train=False)
    with pytest.raises(ValueError) as info:
        list(dataset)
    assert str(shard) in str(info.value)
    assert f":{key}" in str(info.value)


def test_json_caption_field_reads_org_caption(tmp_path: Path) -> None:
    _mixed_shard(tmp_path)
    cfg = ShardConfig(shards=str(tmp_path), caption_field="json:org_caption")
    dataset = CaptionShards(cfg, ImageConfig(size=16), _char_tokenize, train=False)
    assert [_decode_chars(item["caption_ids"]) for item in dataset] == ["no txt here"]
    assert dataset.bad.total == 3


def test_resolve_shards_specs(tmp_path: Path) -> None:
    for i in range(3):
        _write_shard(tmp_path / f"part-{i:05d}.tar", {"k": {"txt": b"x"}})
    expected = [str(tmp_path / f"part-{i:05d}.tar") for i in range(3)]
    assert resolve_shards(str(tmp_path)) == expected
    assert resolve_shards(str(tmp_path / "part-*.tar")) == expected
    assert resolve_shards(str(tmp_path / "part-{00000..00002}.tar")) == expected
    with pytest.raises(FileNotFoundError, match="part-00003.tar"):
        resolve_shards(str(tmp_path / "part-{00000..00003}.tar"))


def test_resolve_shards_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "data-00000.tar"
    with pytest.raises(FileNotFoundError, match="data-00000.tar"):
        resolve_shards(str(missing))
    with pytest.raises(FileNotFoundError):
        resolve_shards(str(tmp_path / "nothing-*.tar"))


def test_resolve_shards_empty_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        resolve_shards(str(tmp_path / "empty"))


# --- images ---------------------------------------------------------------------------------------------


def test_to_tensor_normalises_with_imagenet_statistics() -> None:
    colour = (255, 0, 128)
    tensor = to_tensor(_image(colour, (40, 30)), ImageConfig(size=24))
    assert tensor.shape == (3, 24, 24) and tensor.dtype == torch.float32
    for channel in range(3):
        expected = (colour[channel] / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(tensor[channel], torch.full((24, 24), expected), atol=1e-5)


def test_to_tensor_custom_mean_std() -> None:
    half = (0.5, 0.5, 0.5)
    tensor = to_tensor(_image((255, 255, 255)), ImageConfig(size=8, mean=half, std=half))
    assert torch.allclose(tensor, torch.ones(3, 8, 8))


def test_pad_to_square_pads_with_the_mean_colour() -> None:
    colour = (255, 255, 255)
    tensor = to_tensor(_image(colour, (40, 20)), ImageConfig(size=40, pad_to_square=True))
    assert tensor.shape == (3, 40, 40)
    pad = torch.cat([tensor[:, :10], tensor[:, 30:]], dim=1)
    assert pad.abs().max() < 0.02  # the mean colour normalises to ~0
    content = tensor[:, 10:30]
    for channel in range(3):
        expected = (1 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(content[channel], torch.full_like(content[channel], expected), atol=1e-5)
    # Without padding the whole image is stretched: no ~0 rows.
    stretched = to_tensor(_image(colour, (40, 20)), ImageConfig(size=40))
    assert stretched.abs().min() > 1.0


def test_pad_to_square_with_resize_keeps_pad_area_near_zero() -> None:
    tensor = to_tensor(_image((0, 0, 0), (20, 60)), ImageConfig(size=30, pad_to_square=True))
    # a 20-wide image centred in 60: columns 0..19 and 40..59 are padding, i.e. 0..9 and 20..29 after resize
    assert tensor[:, :, :8].abs().max() < 0.05 and tensor[:, :, 22:].abs().max() < 0.05
    assert tensor[:, :, 12:18].max() < -1.5


def test_augment_with_everything_off_returns_the_image_unchanged() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    cfg = AugmentConfig(crop_min_area=1.0, jitter_strength=0.0, jitter_prob=1.0, grayscale_prob=0.0)
    for seed in range(5):
        out = augment(image, 48, cfg, random.Random(seed))
        assert out.mode == "RGB"
        assert np.array_equal(np.asarray(out), pixels)


def test_augment_grayscale_and_jitter_change_the_image() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    gray = np.asarray(augment(image, 32, AugmentConfig(1.0, 0.0, 0.0, 1.0), random.Random(0))).astype(int)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    jittered = augment(image, 32, AugmentConfig(1.0, 0.4, 1.0, 0.0), random.Random(0))
    assert jittered.size == (32, 32) and not np.array_equal(np.asarray(jittered), np.asarray(image))


def test_augment_with_crop_resizes_to_the_requested_size() -> None:
    image = _image((10, 200, 10), (90, 60))
    out = augment(image, 40, AugmentConfig(), random.Random(3))
    assert out.size == (40, 40) and out.mode == "RGB"


@pytest.mark.parametrize(("width", "height", "min_area"), [(100, 100, 0.4), (200, 50, 0.4), (30, 90, 1.0)])
def test_random_resized_crop_output_size(width: int, height: int, min_area: float) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    for seed in range(10):
        assert random_resized_crop(image, 24, min_area, random.Random(seed)).size == (24, 24)
    first = random_resized_crop(image, 24, min_area, random.Random(9))
    assert first.tobytes() == random_resized_crop(image, 24, min_area, random.Random(9)).tobytes()


# --- LLaVA-format stage data ----------------------------------------------------------------------------

IMAGE_CFG = ImageConfig(size=16)


@pytest.fixture(scope="module")
def world_tokenizer(tiny_world: Path):
    return load_tokenizer(LLMConfig(tokenizer=str(tiny_world / "tokenizer")))


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _stage(tmp_path: Path, records: list) -> tuple[Path, Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("red.jpg", (220, 20, 20)), ("blue.jpg", (20, 20, 220))):
        _image(colour, (24, 24)).save(folder / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path, folder


GOOD = [
    {"id": "good-red", "image": "red.jpg", "conversations": _turns("<image>\nWhat colour?", "red")},
    {"id": "good-text", "conversations": _turns("Say hello to the big blue world.", "hello")},
    {"id": "good-blue", "image": "blue.jpg", "conversations": _turns("What colour?\n<image>", "blue")},
]
BAD = [
    {"id": "bad-missing", "image": "missing.jpg", "conversations": _turns("<image>\nWhat?", "x")},
    {"id": "bad-two", "image": "red.jpg", "conversations": _turns("<image>\n<image>\nWhat?", "x")},
    {"id": "bad-nomarker", "image": "red.jpg", "conversations": _turns("What?", "x")},
    {"id": "bad-malformed", "image": "red.jpg", "conversations": "<image>\nWhat?"},
]


def _dataset(path: Path, folder: Path, tokenizer, strict: bool = False) -> ConversationDataset:
    return ConversationDataset(path, folder, tokenizer, IMAGE_CFG, fmt="chat", num_image_tokens=4,
                               max_length=256, strict=strict)


def test_lenient_dataset_skips_and_counts_bad_records(tmp_path: Path, world_tokenizer) -> None:
    path, folder = _stage(tmp_path, [GOOD[0], BAD[0], GOOD[1], BAD[1], BAD[2], BAD[3], GOOD[2]])
    dataset = _dataset(path, folder, world_tokenizer)
    assert [s.id for s in dataset.samples] == ["good-red", "good-text", "good-blue"]
    assert sum(dataset.skipped.values()) == 4
    assert len(dataset) == 3 and len(dataset.lengths) == 3
    item = dataset[0]
    assert item["pixel_values"].shape == (3, 16, 16)
    assert item["pixel_values"][0].mean() > item["pixel_values"][2].mean()  # red
    assert dataset[1]["pixel_values"] is None
    image_id = world_tokenizer.convert_tokens_to_ids("<image>")
    assert item["input_ids"].tolist().count(image_id) == 4
    assert dataset[1]["input_ids"].tolist().count(image_id) == 0


@pytest.mark.parametrize("bad", BAD, ids=[b["id"] for b in BAD])
def test_strict_dataset_raises_naming_the_sample(tmp_path: Path, world_tokenizer, bad: dict) -> None:
    path, folder = _stage(tmp_path, [GOOD[0], bad])
    with pytest.raises(ValueError, match=bad["id"]):
        _dataset(path, folder, world_tokenizer, strict=True)


def test_dataset_of_missing_json_names_it(tmp_path: Path, world_tokenizer) -> None:
    _, folder = _stage(tmp_path, GOOD)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        _dataset(tmp_path / "absent.json", folder, world_tokenizer)


def test_dataset_of_malformed_json_names_the_file(tmp_path: Path, world_tokenizer) -> None:
    path, folder = _stage(tmp_path, GOOD)
    path.write_text('[{"id": "a", "conversations": [')
    with pytest.raises(ValueError, match="data.json"):
        _dataset(path, folder, world_tokenizer)


def test_dataset_with_no_usable_sample_raises(tmp_path: Path, world_tokenizer) -> None:
    path, folder = _stage(tmp_path, BAD)
    with pytest.raises(ValueError, match="no usable samples"):
        _dataset(path, folder, world_tokenizer)


def test_unreadable_image_is_skipped_counted_and_replaced(tmp_path: Path, world_tokenizer) -> None:
    path, folder = _stage(tmp_path, [GOOD[0], GOOD[2]])
    (folder / "red.jpg").write_bytes(b"garbage, not a jpeg at all")
    dataset = _dataset(path, folder, world_tokenizer)
    assert len(dataset) == 2 and sum(dataset.skipped.values()) == 0
    item = dataset[0]
    assert sum(dataset.skipped.values()) == 1
    assert torch.equal(item["input_ids"], dataset[1]["input_ids"])  # the blue sample stood in
    assert item["pixel_values"][2].mean() > item["pixel_values"][0].mean()


def test_collate_pads_and_stacks_present_images(tmp_path: Path, world_tokenizer) -> None:
    path, folder = _stage(tmp_path, GOOD)
    dataset = _dataset(path, folder, world_tokenizer)
    batch_items = [dataset[0], dataset[1], dataset[2]]
    pad = world_tokenizer.pad_token_id
    batch = collate(batch_items, pad_id=pad)
    lengths = [len(item["input_ids"]) for item in batch_items]
    assert len(set(lengths)) > 1
    for name in ("input_ids", "labels", "attention_mask"):
        assert batch[name].shape == (3, max(lengths))
    for row, (item, n) in enumerate(zip(batch_items, lengths, strict=True)):
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"])
        assert torch.equal(batch["labels"][row, :n], item["labels"])
        assert (batch["input_ids"][row, n:] == pad).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert torch.equal(batch["pixel_values"][0], batch_items[0]["pixel_values"])
    assert torch.equal(batch["pixel_values"][1], batch_items[2]["pixel_values"])
    assert batch["input_ids"].dtype == torch.long


def test_collate_without_images_has_no_pixel_values(tmp_path: Path, world_tokenizer) -> None:
    """A text-only batch carries no `pixel_values` key, so it also suits a plain causal LM."""
    path, folder = _stage(tmp_path, GOOD)
    dataset = _dataset(path, folder, world_tokenizer)
    item = dataset[1]
    assert item["pixel_values"] is None
    batch = collate([item], pad_id=0)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert torch.equal(batch["input_ids"][0], item["input_ids"])


def test_line_corpus_wraps_each_line_in_begin_and_end_of_text(tmp_path: Path, world_tokenizer) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A red star.\n\n  Two objects.  \n")
    items = LineCorpus(corpus, world_tokenizer, max_length=4)
    assert len(items) == 2
    first = items[0]["input_ids"].tolist()
    assert first[0] == world_tokenizer.bos_token_id and first[-1] == world_tokenizer.eos_token_id
    assert len(first) == 4 and items.lengths == [4, 4]
    full = LineCorpus(corpus, world_tokenizer, max_length=64)[1]["input_ids"].tolist()
    assert world_tokenizer.decode(full[1:-1]) == "Two objects."


def test_repeated_words_are_a_run_then_its_repeat_with_loss_on_the_repeat_only(tmp_path: Path,
                                                                              world_tokenizer) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Top left: a small red star.\nA bar chart with three bars: blue 7.\n")
    items = RepeatedWords.from_corpus(corpus, world_tokenizer, count=50, seed=3)
    vocabulary = {"Top", "left", "a", "small", "red", "star", "A", "bar", "chart", "with", "three", "bars", "blue", "7"}
    assert len(items) == 50 and len(items.lengths) == 50
    for index in range(50):
        item = items[index]
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        assert ids[0] == world_tokenizer.bos_token_id and len(ids) == items.lengths[index]
        half = (len(ids) - 1) // 2
        assert ids[1 : 1 + half] == ids[1 + half :]
        assert labels[: 1 + half] == [-100] * (1 + half) and labels[1 + half :] == ids[1 + half :]
        words = world_tokenizer.decode(ids[1 : 1 + half]).split()
        assert 4 <= len(words) <= 12 and set(words) <= vocabulary
    assert items[7]["input_ids"].tolist() == RepeatedWords.from_corpus(corpus, world_tokenizer, 50, seed=3)[7][
        "input_ids"].tolist()
    other_seed = RepeatedWords.from_corpus(corpus, world_tokenizer, 50, seed=4)
    assert any(items[i]["input_ids"].tolist() != other_seed[i]["input_ids"].tolist() for i in range(50))
    with pytest.raises(ValueError, match="at least one word"):
        RepeatedWords([], 5, [world_tokenizer.bos_token_id])


def test_language_warm_up_mixes_in_the_requested_share_of_repeats(tmp_path: Path, tiny_world: Path) -> None:
    text = tiny_world / "text"
    base = len([line for line in (text / "corpus.txt").read_text().splitlines() if line.strip()])
    base += len(json.loads((text / "reading.json").read_text()))
    llm = LLMConfig(tokenizer=str(tiny_world / "tokenizer"), hidden_size=32, num_layers=1, num_heads=2,
                    num_kv_heads=2, intermediate_size=64)

    def config(fraction: float) -> LanguageConfig:
        return LanguageConfig(out=str(tmp_path / f"lm{fraction}"), corpus=str(text / "corpus.txt"),
                              conversations=[str(text / "reading.json")], llm=llm, epochs=0.02, batch_size=32,
                              repeat_fraction=fraction, logging_steps=1)

    summary = pretrain_language(config(0.75))
    assert summary["documents"] == 4 * base and (tmp_path / "lm0.75" / "model" / "config.json").is_file()
    with pytest.raises(ValueError, match="repeat_fraction"):
        pretrain_language(config(1.0))


def test_line_corpus_of_missing_or_empty_file_names_it(tmp_path: Path, world_tokenizer) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        LineCorpus(tmp_path / "nowhere.txt", world_tokenizer, max_length=8)
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="blank.txt"):
        LineCorpus(tmp_path / "blank.txt", world_tokenizer, max_length=8)
