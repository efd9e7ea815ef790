"""Named chat templates for LLMs whose tokenizer has none (or the wrong one), behind a registry.

A recipe names its template (`llm.chat_template: llama3`); the template is then written into the tokenizer,
saved with every model folder, and used by training, evaluation and serving alike, so nothing is ever
guessed from a folder name. `None` keeps the tokenizer's own template (Llama-3-Instruct and SmolLM-Instruct
ship theirs). The texts follow the formats LLaVA trains with:

- `llama3`: Meta Llama-3-Instruct headers, `<|eot_id|>` closing each turn;
- `chatml`: SmolLM-Instruct's `<|im_start|>` / `<|im_end|>` turns;
- `vicuna_v1`: LLaVA-1.5's `USER: ... ASSISTANT: ...</s>` with its default system sentence.

(LLaVA's `plain` alignment format has no template: it is the `plain` prompt format of a stage.)
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from mllm.registry import Registry

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and the special tokens it needs in the vocabulary."""

    jinja: str
    special_tokens: tuple[str, ...] = ()


TEMPLATES: Registry[ChatTemplate] = Registry("chat template")

TEMPLATES.register("llama3")(ChatTemplate(
    jinja=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
        " + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
))

TEMPLATES.register("chatml")(ChatTemplate(
    jinja=(
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    special_tokens=("<|im_start|>", "<|im_end|>"),
))

TEMPLATES.register("vicuna_v1")(ChatTemplate(
    jinja=(
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + ' ' }}"
        "{% set turns = messages[1:] %}{% else %}{{ \"" + VICUNA_SYSTEM + " \" }}{% set turns = messages %}{% endif %}"
        "{% for message in turns %}"
        "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
        "{% else %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
))


def apply_template(tokenizer: PreTrainedTokenizerBase, name: str) -> list[str]:
    """Install template `name` on `tokenizer`, adding the special tokens it lacks; returns those added."""
    template = TEMPLATES.get(name)
    if "eos_token" in template.jinja and tokenizer.eos_token is None:
        raise ValueError(f"chat template {name!r} needs an end-of-sequence token; the tokenizer has none")
    vocab = tokenizer.get_vocab()
    missing = [t for t in template.special_tokens if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = template.jinja
    return missing


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end an assistant turn: end-of-sequence plus the special tokens the chat template writes after
    a reply (`<|eot_id|>`, `<|im_end|>`, ...), found by rendering one exchange, not by name."""
    stops = {tokenizer.eos_token_id}
    if tokenizer.chat_template is not None:
        exchange = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
        full = tokenizer.apply_chat_template(exchange, tokenize=False)
        prompt = tokenizer.apply_chat_template(exchange[:1], tokenize=False, add_generation_prompt=True)
        reply = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        stops |= set(reply) & set(tokenizer.all_special_ids)
    return sorted(i for i in stops if i is not None)
