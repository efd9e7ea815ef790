"""The world's tokenizer: loadable with AutoTokenizer, lossless on the world's text, ChatML chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

SPECIAL_TOKENS = ("<image>", "<|im_start|>", "<|im_end|>", "<pad>", "<s>")


@pytest.fixture(scope="module")
def tokenizer(tiny_world: Path):
    return AutoTokenizer.from_pretrained(tiny_world / "tokenizer")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_folder_loads_with_special_tokens_set(tokenizer) -> None:
    assert tokenizer.pad_token == "<pad>"
    assert tokenizer.bos_token == "<s>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template
    assert 300 < len(tokenizer) <= 1024


def test_round_trip_on_every_dense_caption_and_conversation_turn(tiny_world: Path, tokenizer) -> None:
    texts = []
    for name in ("align", "instruct"):
        for record in json.loads((tiny_world / "stage_data" / f"{name}.json").read_text()):
            texts += [turn["value"] for turn in record["conversations"]]
    texts += (tiny_world / "text" / "corpus.txt").read_text().splitlines()
    assert len(texts) > 1000
    unk = tokenizer.unk_token_id
    for text in texts:
        ids = _ids(tokenizer, text)
        assert unk is None or unk not in ids
        assert tokenizer.decode(ids) == text


def test_round_trip_on_text_outside_the_training_corpus(tokenizer) -> None:
    # Byte-level BPE: any string, even characters never seen in training, decodes back exactly.
    for text in ("Zebra quokka ünïcödé 🙂 tabs\tand\nnewlines", "  leading and trailing spaces  "):
        assert tokenizer.decode(_ids(tokenizer, text)) == text


def test_digits_are_one_token_each(tokenizer) -> None:
    tokens = tokenizer.convert_ids_to_tokens(_ids(tokenizer, "1234567890"))
    assert tokens == list("1234567890")
    ids = _ids(tokenizer, "The red bar has a value of 97.")
    pieces = [tokenizer.decode([i]) for i in ids]
    assert "9" in pieces and "7" in pieces
    assert not any(any(c.isdigit() for c in p) and len(p.strip()) > 1 for p in pieces)


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_special_token_is_a_single_id(tokenizer, token: str) -> None:
    ids = _ids(tokenizer, token)
    assert ids == [tokenizer.convert_tokens_to_ids(token)]
    # Also inside running text, with no space around it.
    inside = _ids(tokenizer, f"abc{token}def")
    assert ids[0] in inside
    assert tokenizer.decode(inside) == f"abc{token}def"


def test_special_tokens_have_distinct_ids(tokenizer) -> None:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tokenizer.pad_token_id == ids[3] and tokenizer.eos_token_id == ids[2]


def test_chat_template_renders_chatml_after_begin_of_text(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nWhat colour is the star?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "Where is it?"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat colour is the star?<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
        "<|im_start|>user\nWhere is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(messages[:3], tokenize=False, add_generation_prompt=False)
    assert without.endswith("<|im_start|>assistant\nred<|im_end|>\n")


def test_chat_template_special_tokens_tokenize_as_single_ids(tokenizer) -> None:
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    tokens = tokenizer.convert_ids_to_tokens(_ids(tokenizer, text))
    assert tokens.count("<|im_start|>") == 2 and tokens.count("<|im_end|>") == 1
