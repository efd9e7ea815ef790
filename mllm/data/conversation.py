"""Conversations to token ids and labels, rendered turn by turn with the tokenizer's chat template.

Each piece of the rendered conversation (everything up to an assistant reply, then the reply) is tokenized
on its own and the ids are concatenated, so the loss mask is the tokenization itself: it cannot drift from
it the way LLaVA's length arithmetic did ("tokenization mismatch, loss = 0"). Only assistant replies,
with their end-of-turn token, carry labels.

Formats: `chat` uses the chat template stored with the tokenizer; `plain` (LLaVA's alignment stage) is
begin-of-text, the image, the caption and end-of-text, with the human turn dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from mllm.llm import IMAGE_TOKEN

IGNORE_INDEX = -100
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
FORMATS = ("chat", "plain")
ImageTokens = int | Sequence[int]  # positions of every image, or of each image in order


class ConversationError(ValueError):
    """A conversation that cannot be encoded; the message says why."""


def to_messages(turns: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """LLaVA `conversations` ({"from", "value"}) to chat messages ({"role", "content"})."""
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"turn {i} is not an object with 'from' and 'value'")
        if turn["from"] not in ROLES or not isinstance(turn["value"], str):
            raise ConversationError(f"turn {i} has unknown role {turn['from']!r} or a non-string value")
        messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise ConversationError("conversation has no assistant turn")
    return messages


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def bos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The begin-of-text token where the tokenizer has one, as Llama-style LMs see at position 0 in
    pretraining; image features then never take the first position."""
    return [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    if tokenizer.chat_template is None:
        raise ConversationError("the tokenizer has no chat template; save one with the tokenizer")
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise ConversationError("the chat template does not render conversations prefix by prefix")
        context, reply = _ids(tokenizer, prompt[len(rendered):]), _ids(tokenizer, full[len(prompt):])
        ids += context + reply
        labels += [IGNORE_INDEX] * len(context) + reply
        rendered = full
    return ids, labels


def encode_plain(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    reply = next(m["content"] for m in messages if m["role"] == "assistant")
    caption = _ids(tokenizer, reply) + [tokenizer.eos_token_id]
    image = bos(tokenizer) + _ids(tokenizer, IMAGE_TOKEN)
    return image + caption, [IGNORE_INDEX] * len(image) + caption


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    turns: Sequence[dict[str, str]],
    fmt: str,
    num_image_tokens: ImageTokens,
    max_length: int,
) -> tuple[list[int], list[int]]:
    """Token ids and labels for one LLaVA conversation, with each `<image>` expanded to its positions.

    Truncation drops the tail but never cuts through image positions; a sample whose image does not fit,
    or that keeps no labelled token, is refused with a ConversationError.
    """
    messages = to_messages(turns)
    if fmt == "chat":
        ids, labels = encode_chat(tokenizer, messages)
    elif fmt == "plain":
        ids, labels = encode_plain(tokenizer, messages)
    else:
        raise ConversationError(f"unknown prompt format {fmt!r}; expected one of {FORMATS}")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    out_ids, out_labels = expand_images(ids, labels, image_id, num_image_tokens)
    if len(out_ids) > max_length:
        last_image = max((i for i, t in enumerate(out_ids) if t == image_id), default=-1)
        if last_image >= max_length:
            raise ConversationError(f"image positions end at {last_image + 1} > max_length {max_length}")
        out_ids, out_labels = out_ids[:max_length], out_labels[:max_length]
    if all(label == IGNORE_INDEX for label in out_labels):
        raise ConversationError("no assistant token left to learn from after truncation")
    return out_ids, out_labels


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, fmt: str,
                  num_image_tokens: ImageTokens) -> list[int]:
    """Ids of a one-turn user prompt (with `<image>`) ready for generation, image positions expanded."""
    if fmt == "plain":
        ids = bos(tokenizer) + _ids(tokenizer, IMAGE_TOKEN)
        return expand_images(ids, ids, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), num_image_tokens)[0]
    return encode_dialogue_prompt(tokenizer, [{"role": "user", "content": prompt}], num_image_tokens)


def encode_dialogue_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                           num_image_tokens: ImageTokens) -> list[int]:
    """Ids of a conversation that ends with a user turn, ready for the assistant's reply: the earlier
    exchanges tokenized piece by piece exactly as in training, then the new turn and the generation prompt."""
    if not messages or messages[-1]["role"] != "user":
        raise ConversationError("a prompt must end with a user turn")
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    ids, rendered = [], ""
    if replies:
        history = messages[: replies[-1] + 1]
        ids = encode_chat(tokenizer, history)[0]
        rendered = _render(tokenizer, history, generation_prompt=False)
    elif tokenizer.chat_template is None:
        raise ConversationError("the tokenizer has no chat template; save one with the tokenizer")
    prompt = _render(tokenizer, messages, generation_prompt=True)
    if not prompt.startswith(rendered):
        raise ConversationError("the chat template does not render conversations prefix by prefix")
    ids += _ids(tokenizer, prompt[len(rendered):])
    return expand_images(ids, ids, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), num_image_tokens)[0]


def expand_images(ids: list[int], labels: list[int], image_id: int, n: ImageTokens) -> tuple[list[int], list[int]]:
    """Repeat each image placeholder `n` times (its labels ignored); with one count per image (AnyRes,
    whose count depends on the image's size) the k-th placeholder gets the k-th count."""
    counts = [n] * ids.count(image_id) if isinstance(n, int) else list(n)
    if len(counts) != ids.count(image_id):
        raise ConversationError(f"{len(counts)} image token counts for {ids.count(image_id)} {IMAGE_TOKEN} markers")
    out_ids: list[int] = []
    out_labels: list[int] = []
    images = iter(counts)
    for token, label in zip(ids, labels, strict=True):
        if token == image_id:
            count = next(images)
            out_ids += [image_id] * count
            out_labels += [IGNORE_INDEX] * count
        else:
            out_ids.append(token)
            out_labels.append(label)
    return out_ids, out_labels
