"""The synthetic world's tokenizer: byte-level BPE trained on the world's own text, saved in HF format.

Digits are split one by one so numbers compose from a handful of tokens. The chat template is ChatML
(the format of SmolLM's instruct models) opened by a begin-of-text token as Llama-3's template is, stored
with the tokenizer so training, evaluation and serving render conversations identically.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "<|im_end|>"
IM_START, IMAGE = "<|im_start|>", "<image>"
CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train on `texts`, save to `out_dir`, and return the tokenizer as AutoTokenizer would load it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, IM_START, EOS, IMAGE]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        extra_special_tokens=[IM_START, IMAGE], model_max_length=512,
    )
    wrapped.chat_template = CHATML_TEMPLATE
    wrapped.save_pretrained(out_dir)
    return wrapped
