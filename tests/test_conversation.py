"""Conversations to ids and labels: no tokenization mismatch, only replies labelled, several templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllm.data.conversation import (
    IGNORE_INDEX,
    ConversationError,
    encode_conversation,
    encode_prompt,
    expand_images,
    to_messages,
)
from mllm.llm import LLMConfig, load_tokenizer

N_IMAGE = 5
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
VICUNA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' + message['content'] + '</s>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Rendering depends on how many messages there are: a later turn changes the text of earlier ones.
NOT_PREFIX_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.last %}LAST {% endif %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def _world_tokenizer(world: Path):
    return load_tokenizer(LLMConfig(tokenizer=str(world / "tokenizer")))


@pytest.fixture()
def chatml(tiny_world: Path):
    return _world_tokenizer(tiny_world)


@pytest.fixture()
def llama3(tiny_world: Path):
    tokenizer = _world_tokenizer(tiny_world)
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_TOKENS})
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


@pytest.fixture()
def vicuna(tiny_world: Path):
    tokenizer = _world_tokenizer(tiny_world)
    tokenizer.add_special_tokens({"additional_special_tokens": ["</s>"]})
    tokenizer.chat_template = VICUNA_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def conversations(tiny_world: Path) -> list[list[dict[str, str]]]:
    """Multi-turn conversations of the tiny world's instruct mix, with a system turn on one of them."""
    records = json.loads((tiny_world / "stage_data" / "instruct.json").read_text())
    multi = [r["conversations"] for r in records if len(r["conversations"]) >= 6][:12]
    assert len(multi) == 12
    return [[{"from": "system", "value": "You see shapes."}, *multi[0]], *multi]


def _runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of labelled positions, checking that each label is the id at its own position."""
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(label)
    return runs + ([current] if current else [])


def _check_template(tokenizer, turns: list[dict[str, str]], reply_prefix: str, reply_suffix: str) -> None:
    messages = to_messages(turns)
    ids, labels = encode_conversation(tokenizer, turns, "chat", N_IMAGE, max_length=4096)
    assert len(ids) == len(labels)

    # (a) no tokenization mismatch: the pieces concatenate to the tokenization of the whole rendering.
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    whole = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert ids == expand_images(whole, whole, image_id, N_IMAGE)[0]
    assert ids.count(image_id) == N_IMAGE

    # (b) labels are exactly the replies and their end-of-turn text, nothing else.
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    runs = _runs(ids, labels)
    assert [tokenizer.decode(run) for run in runs] == [reply_prefix + r + reply_suffix for r in replies]
    labelled = {label for label in labels if label != IGNORE_INDEX}
    assert image_id not in labelled
    unlabelled_text = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX])
    for message in messages:
        if message["role"] != "assistant":
            assert message["content"].replace("<image>", "<image>" * N_IMAGE) in unlabelled_text


def test_chatml_pieces_match_whole_tokenization_and_label_only_replies(chatml, conversations) -> None:
    for turns in conversations:
        _check_template(chatml, turns, "", "<|im_end|>\n")


def test_chatml_never_labels_role_headers(chatml, conversations) -> None:
    ids, labels = encode_conversation(chatml, conversations[0], "chat", N_IMAGE, max_length=4096)
    im_start = chatml.convert_tokens_to_ids("<|im_start|>")
    im_end = chatml.convert_tokens_to_ids("<|im_end|>")
    assert im_start in ids and all(lab != im_start for lab in labels)
    ends = [i for i, t in enumerate(ids) if t == im_end]
    labelled_ends = [i for i in ends if labels[i] != IGNORE_INDEX]
    turns = conversations[0]
    assert len(labelled_ends) == sum(t["from"] == "gpt" for t in turns)
    assert len(ends) == len(turns)  # system and user turns end with an unlabelled <|im_end|>


def test_llama3_template_pieces_match_and_label_only_replies(llama3, conversations) -> None:
    for turns in conversations:
        _check_template(llama3, turns, "", "<|eot_id|>")
    ids, labels = encode_conversation(llama3, conversations[1], "chat", N_IMAGE, max_length=4096)
    header_ids = {llama3.convert_tokens_to_ids(t) for t in LLAMA3_TOKENS[:3]}
    assert ids[0] == llama3.convert_tokens_to_ids("<|begin_of_text|>")
    assert not header_ids & {lab for lab in labels if lab != IGNORE_INDEX}


def test_vicuna_template_pieces_match_and_label_only_replies(vicuna, conversations) -> None:
    # The generation prompt ends in "ASSISTANT:", so each reply starts with the space before it.
    for turns in conversations:
        _check_template(vicuna, turns, " ", "</s>")


def test_plain_format_is_bos_image_caption_eos(chatml) -> None:
    turns = [{"from": "human", "value": "<image>\nDescribe the image."},
             {"from": "gpt", "value": "A large red star is at the top left."}]
    ids, labels = encode_conversation(chatml, turns, "plain", N_IMAGE, max_length=512)
    image_id = chatml.convert_tokens_to_ids("<image>")
    caption = chatml(turns[1]["value"], add_special_tokens=False)["input_ids"]
    assert ids == [chatml.bos_token_id] + [image_id] * N_IMAGE + caption + [chatml.eos_token_id]
    assert labels == [IGNORE_INDEX] * (N_IMAGE + 1) + caption + [chatml.eos_token_id]
    assert "Describe" not in chatml.decode(ids)


def test_truncation_drops_the_tail(chatml, conversations) -> None:
    turns = conversations[1]
    full_ids, full_labels = encode_conversation(chatml, turns, "chat", N_IMAGE, max_length=4096)
    first_label = next(i for i, lab in enumerate(full_labels) if lab != IGNORE_INDEX)
    cut = first_label + 1
    ids, labels = encode_conversation(chatml, turns, "chat", N_IMAGE, max_length=cut)
    assert ids == full_ids[:cut] and labels == full_labels[:cut]
    exact_ids, _ = encode_conversation(chatml, turns, "chat", N_IMAGE, max_length=len(full_ids))
    assert exact_ids == full_ids


def test_truncation_never_cuts_through_image_positions(chatml, conversations) -> None:
    turns = conversations[1]
    ids, _ = encode_conversation(chatml, turns, "chat", N_IMAGE, max_length=4096)
    image_id = chatml.convert_tokens_to_ids("<image>")
    first_image = ids.index(image_id)
    for max_length in range(first_image + 1, first_image + N_IMAGE):
        with pytest.raises(ConversationError, match="image"):
            encode_conversation(chatml, turns, "chat", N_IMAGE, max_length=max_length)


def test_truncation_that_leaves_no_label_is_refused(chatml, conversations) -> None:
    turns = conversations[1]
    ids, labels = encode_conversation(chatml, turns, "chat", N_IMAGE, max_length=4096)
    first_label = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    with pytest.raises(ConversationError, match="no assistant token"):
        encode_conversation(chatml, turns, "chat", N_IMAGE, max_length=first_label)
    plain = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a red ring"}]
    with pytest.raises(ConversationError):
        encode_conversation(chatml, plain, "plain", N_IMAGE, max_length=N_IMAGE + 1)


@pytest.mark.parametrize(
    ("turns", "fmt", "message"),
    [
        ([{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "yo"}], "chat", "robot"),
        ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": 3}], "chat", "non-string"),
        ([{"from": "human", "value": "<image>\nhi"}], "chat", "no assistant turn"),
        ([{"from": "human", "value": "hi"}, {"value": "yo"}], "chat", "turn 1"),
        (["not a turn", {"from": "gpt", "value": "yo"}], "chat", "turn 0"),
        ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "markdown", "markdown"),
    ],
    ids=["unknown-role", "non-string-value", "no-assistant", "missing-from", "not-a-dict", "unknown-format"],
)
def test_encoding_errors_name_the_problem(chatml, turns, fmt: str, message: str) -> None:
    with pytest.raises(ConversationError, match=message):
        encode_conversation(chatml, turns, fmt, N_IMAGE, max_length=512)


def test_template_that_is_not_prefix_consistent_is_refused(chatml, conversations) -> None:
    chatml.chat_template = NOT_PREFIX_TEMPLATE
    with pytest.raises(ConversationError, match="prefix"):
        encode_conversation(chatml, conversations[1], "chat", N_IMAGE, max_length=4096)


def test_tokenizer_without_chat_template_is_refused(chatml, conversations) -> None:
    chatml.chat_template = None
    with pytest.raises(ConversationError, match="chat template"):
        encode_conversation(chatml, conversations[1], "chat", N_IMAGE, max_length=4096)


@pytest.mark.parametrize("n", [1, 7])
def test_encode_prompt_ends_with_generation_prompt(chatml, n: int) -> None:
    ids = encode_prompt(chatml, "<image>\nWhat colour is the star?", "chat", n)
    image_id = chatml.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == n
    generation = chatml("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(generation):] == generation
    assert chatml.decode(ids) == (
        "<s><|im_start|>user\n" + "<image>" * n + "\nWhat colour is the star?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_encode_prompt_with_llama3_template(llama3) -> None:
    ids = encode_prompt(llama3, "<image>\nHow many objects?", "chat", 3)
    assert ids.count(llama3.convert_tokens_to_ids("<image>")) == 3
    assert llama3.decode(ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_encode_prompt_plain_is_bos_then_the_image(chatml) -> None:
    ids = encode_prompt(chatml, "<image>\nignored", "plain", 4)
    assert ids == [chatml.bos_token_id] + [chatml.convert_tokens_to_ids("<image>")] * 4


def test_chat_sequences_open_with_the_begin_of_text_token(chatml, conversations) -> None:
    """A constant first position, as Llama-3's template gives: image features never sit at position 0."""
    ids, _ = encode_conversation(chatml, conversations[0], "chat", N_IMAGE, max_length=4096)
    assert ids[0] == chatml.bos_token_id and ids.count(chatml.bos_token_id) == 1


def test_chat_encoding_agrees_with_the_prompt_encoding(chatml) -> None:
    """Training and generation see the same prefix for the first question."""
    turns = [{"from": "human", "value": "<image>\nWhat shape is in the center?"},
             {"from": "gpt", "value": "star"}]
    ids, labels = encode_conversation(chatml, turns, "chat", N_IMAGE, max_length=512)
    prompt = encode_prompt(chatml, turns[0]["value"], "chat", N_IMAGE)
    assert ids[: len(prompt)] == prompt
    assert all(lab == IGNORE_INDEX for lab in labels[: len(prompt)])
    assert all(lab != IGNORE_INDEX for lab in labels[len(prompt):])
