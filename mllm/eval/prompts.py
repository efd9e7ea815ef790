"""Prompt text per benchmark, as lmms-eval 0.7.3 builds it for its `default` model variant.

The image is not part of the returned string: the model's chat template inserts it. The "llava" protocol
changes only TextVQA, to the prompt of LLaVA-1.5's `llava_textvqa_val_v051_ocr.jsonl`: the question with
its first letter upper-cased (not `str.capitalize`, which lowercases the rest), then a
"Reference OCR token:" line listing the row's OCR tokens (present even when the list is empty, as in
that file), then the short-answer instruction. lmms-eval's default TextVQA prompt has no OCR tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mllm.eval.metrics import check_benchmark, check_protocol

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
SINGLE_WORD = "\nAnswer the question with a single word."
OPTION_LETTER = "\nAnswer with the option's letter from the given choices directly."
# MME questions end with this; lmms-eval swaps it for SHORT_ANSWER (as LLaVA's MME question file does).
MME_YES_NO_SUFFIX = " Please answer yes or no."

# lmms-eval's generation limits; TextVQA and SEED set none (they stop on "ASSISTANT:"), so 32 here.
MAX_NEW_TOKENS: dict[str, int] = {
    "textvqa": 32,
    "chartqa": 16,
    "ocrbench": 128,
    "mme": 16,
    "seed": 32,
    "sqa_img": 16,
    "gqa": 16,
    "pope": 128,
}


def _field(doc: Mapping[str, Any], column: str, benchmark: str) -> Any:
    """doc[column], or a ValueError naming the missing column."""
    if column not in doc:
        raise ValueError(f"{benchmark}: doc is missing column {column!r}")
    return doc[column]


def _text(doc: Mapping[str, Any], column: str, benchmark: str) -> str:
    """A string column; a ValueError if it is missing or not a string."""
    value = _field(doc, column, benchmark)
    if not isinstance(value, str):
        raise ValueError(f"{benchmark}: column {column!r} must be a string, got {type(value).__name__}")
    return value


def _text_list(doc: Mapping[str, Any], column: str, benchmark: str) -> list[str]:
    """A list-of-strings column (list, tuple or numpy array); a ValueError otherwise."""
    value = _field(doc, column, benchmark)
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise ValueError(f"{benchmark}: column {column!r} must be a list of strings")
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{benchmark}: column {column!r} must hold only strings")
    return items


def _textvqa(doc: Mapping[str, Any], protocol: str) -> str:
    question = _text(doc, "question", "textvqa")
    if protocol == "default":
        # lmms-eval calls str.capitalize(), which also lowercases the rest ("RTX" -> "rtx").
        return question.capitalize() + SHORT_ANSWER
    tokens = _text_list(doc, "ocr_tokens", "textvqa")
    return f"{question[:1].upper()}{question[1:]}\nReference OCR token: {', '.join(tokens)}{SHORT_ANSWER}"


def _seed(doc: Mapping[str, Any]) -> str:
    options = [f"{letter}. {_field(doc, f'choice_{letter.lower()}', 'seed')}" for letter in "ABCD"]
    return _text(doc, "question", "seed") + "\n" + "\n".join(options) + OPTION_LETTER


def _sqa_img(doc: Mapping[str, Any]) -> str:
    hint = _field(doc, "hint", "sqa_img")
    # lmms-eval adds the context line only for a truthy hint; None (a missing value) counts as no hint.
    context = f"Context: {hint}\n" if hint else ""
    choices = _text_list(doc, "choices", "sqa_img")
    options = "\n".join(f"{chr(ord('A') + i)}. {choice}" for i, choice in enumerate(choices))
    return f"{context}{_text(doc, 'question', 'sqa_img')}\n{options}{OPTION_LETTER}"


def build_prompt(benchmark: str, doc: Mapping[str, Any], protocol: str = "default") -> str:
    """The text prompt for one dataset row of `benchmark` under `protocol` (image not included).

    Raises ValueError for an unknown benchmark or protocol, or a row lacking a needed column.
    """
    check_benchmark(benchmark)
    check_protocol(protocol)
    if benchmark == "textvqa":
        return _textvqa(doc, protocol)
    if benchmark == "chartqa":
        return _text(doc, "question", benchmark) + SINGLE_WORD
    if benchmark == "ocrbench":
        return _text(doc, "question", benchmark).strip()
    if benchmark == "mme":
        # lmms-eval removes the yes/no sentence wherever it occurs and always appends the instruction.
        return _text(doc, "question", benchmark).strip().replace(MME_YES_NO_SUFFIX, "") + SHORT_ANSWER
    if benchmark == "seed":
        return _seed(doc)
    if benchmark == "sqa_img":
        return _sqa_img(doc)
    if benchmark == "gqa":
        return _text(doc, "question", benchmark) + SHORT_ANSWER
    return _text(doc, "question", benchmark).strip() + SHORT_ANSWER
