"""Named chat templates: exact renderings, loss masks that cover exactly the replies, stop tokens, storage."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mllm.data.conversation import IGNORE_INDEX, encode_conversation
from mllm.data.templates import TEMPLATES, VICUNA_SYSTEM, apply_template, end_of_turn_ids
from mllm.llm import LLMConfig, load_tokenizer

TURNS = [
    {"from": "human", "value": "<image>\nWhat colour is the circle?"},
    {"from": "gpt", "value": "Red."},
    {"from": "human", "value": "And the square?"},
    {"from": "gpt", "value": "Blue, and it is large."},
]
REPLIES = ["Red.", "Blue, and it is large."]


def _tokenizer(world: Path, name: str | None) -> object:
    return load_tokenizer(LLMConfig(tokenizer=str(world / "tokenizer"), chat_template=name))


def _messages(turns: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in turns]


@pytest.mark.parametrize("name, expected", [
    ("vicuna_v1", "<s>" + VICUNA_SYSTEM + " USER: <image>\nWhat colour is the circle? ASSISTANT: Red.<|im_end|>"
                  "USER: And the square? ASSISTANT: Blue, and it is large.<|im_end|>"),
    ("llama3", "<s><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat colour is the circle?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nRed.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nAnd the square?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nBlue, and it is large.<|eot_id|>"),
    ("chatml", "<|im_start|>user\n<image>\nWhat colour is the circle?<|im_end|>\n"
               "<|im_start|>assistant\nRed.<|im_end|>\n<|im_start|>user\nAnd the square?<|im_end|>\n"
               "<|im_start|>assistant\nBlue, and it is large.<|im_end|>\n"),
])
def test_templates_render_the_reference_formats(tiny_world: Path, name: str, expected: str) -> None:
    tokenizer = _tokenizer(tiny_world, name)
    assert tokenizer.apply_chat_template(_messages(TURNS), tokenize=False) == expected


def test_vicuna_generation_prompt_ends_with_the_assistant_role(tiny_world: Path) -> None:
    tokenizer = _tokenizer(tiny_world, "vicuna_v1")
    prompt = tokenizer.apply_chat_template(_messages(TURNS[:1]), tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("What colour is the circle? ASSISTANT:")
    system = [{"role": "system", "content": "Be brief."}, *_messages(TURNS[:2])]
    assert tokenizer.apply_chat_template(system, tokenize=False).startswith("<s>Be brief. USER: <image>")


@pytest.mark.parametrize("name, stop", [("llama3", "<|eot_id|>"), ("chatml", "<|im_end|>"),
                                        ("vicuna_v1", "<|im_end|>")])
def test_labels_cover_exactly_the_replies_and_their_end_of_turn(tiny_world: Path, name: str, stop: str) -> None:
    tokenizer = _tokenizer(tiny_world, name)
    ids, labels = encode_conversation(tokenizer, TURNS, "chat", num_image_tokens=3, max_length=512)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    pairs = list(zip(ids, labels, strict=True))
    assert ids.count(image_id) == 3 and all(lab == IGNORE_INDEX for t, lab in pairs if t == image_id)
    spans, current = [], []
    for token, label in pairs:
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    spans += [current] if current else []
    texts = [tokenizer.decode(span) for span in spans]
    assert [t.strip() for t in texts] == [reply + stop for reply in REPLIES]
    # the ids are the rendered conversation, nothing dropped or duplicated
    rendered = tokenizer.apply_chat_template(_messages(TURNS), tokenize=False)
    assert tokenizer.decode(ids).replace("<image>" * 3, "<image>") == rendered
    assert tokenizer.convert_tokens_to_ids(stop) in end_of_turn_ids(tokenizer)


def test_template_tokens_are_added_once_and_kept_special(tiny_world: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_world / "tokenizer")
    size = len(tokenizer)
    assert apply_template(tokenizer, "llama3") == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert len(tokenizer) == size + 3
    assert apply_template(tokenizer, "llama3") == []
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in tokenizer.all_special_ids
    assert len(tokenizer.tokenize("<|eot_id|>")) == 1


def test_unknown_template_and_missing_eos_are_errors(tiny_world: Path) -> None:
    with pytest.raises(KeyError, match="unknown chat template 'vicuna'.*chatml, llama3, vicuna_v1"):
        _tokenizer(tiny_world, "vicuna")
    tokenizer = AutoTokenizer.from_pretrained(tiny_world / "tokenizer")
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="needs an end-of-sequence token"):
        apply_template(tokenizer, "vicuna_v1")


def test_the_template_is_saved_with_the_tokenizer(tiny_world: Path, tmp_path: Path) -> None:
    tokenizer = _tokenizer(tiny_world, "llama3")
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == TEMPLATES.get("llama3").jinja
    assert reloaded.convert_tokens_to_ids("<|eot_id|>") in end_of_turn_ids(reloaded)
