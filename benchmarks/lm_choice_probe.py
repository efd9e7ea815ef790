"""How many steps does a from-scratch LM of the demo's size need to name the letter of a matching option?

SEED and ScienceQA ask for an option's letter; the demo's LMs answer them at their chance level, even with the
shape or colour to look for at hand (sketch_oracle_probe.py). This trains a fresh Llama of the demo's size on
that last step alone, with no image: "Which option is <word>?" and two to four lettered options of the world's
colour and shape words, laid out as the benchmarks lay out ScienceQA's (`build_prompt`), in the chat template;
the loss is on the letter only, and the held-out accuracy (greedy: the letter is the top token of the whole
vocabulary) is reported every `--eval_every` steps.

- `--order before`: the word is asked before the options, as a VLM meets the image (and the answer it reads
  there) before the options; `after`: the options first, then "Which option is <word>?".
- `--two_options_until N`: every prompt has two options until step N, then two to four.
- `--repeat_fraction F`: that share of every batch is `RepeatedWords` documents, as in the sketch LM's mix.
- `--init LM --steps 0`: only score an existing LM (with its own tokenizer), e.g. a sketch LM of `mllm
  pretrain-lm`.
- Held out: option tuples whose hash falls in a tenth never appear in training (400 prompts drawn from them).

    python benchmarks/lm_choice_probe.py --world runs/demo/world --order before --steps 1500 --eval_every 100 \
        --out benchmarks/results/lm_choice_probe_before.json
"""

from __future__ import annotations

import argparse
import random
import time
import zlib
from pathlib import Path

import torch
from lm_existence_probe import demo_size_lm, left_padded
from report import report, stamp
from transformers import AutoModelForCausalLM, AutoTokenizer

from mllm.data.llava_json import collate
from mllm.eval.prompts import OPTION_LETTER, build_prompt
from mllm.train_stages.language import RepeatedWords
from mllm.world.scene import COLOURS, SHAPES

WORDS = sorted({*SHAPES, *COLOURS})
LETTERS = "ABCD"


def held_out(options: tuple[str, ...]) -> bool:
    """Whether this ordered option tuple is kept for testing (a fixed tenth of all tuples)."""
    return zlib.crc32(" ".join(options).encode()) % 10 == 0


class ChoiceTask:
    """Letter-of-the-matching-option prompts, tokenized in the chat template, with the letter's token."""

    def __init__(self, tokenizer: object, order: str) -> None:
        self.tokenizer, self.order = tokenizer, order
        self.letters = [tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in LETTERS]

    def prompt(self, options: tuple[str, ...], target: int) -> str:
        question = f"Which option is {options[target]}?"
        if self.order == "before":
            return build_prompt("sqa_img", {"question": question, "choices": list(options), "hint": ""})
        listed = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))
        return f"{listed}\n{question}{OPTION_LETTER}"

    def example(self, rng: random.Random, n_options: int, testing: bool) -> tuple[list[int], int]:
        options = tuple(rng.sample(WORDS, n_options))
        while held_out(options) != testing:
            options = tuple(rng.sample(WORDS, n_options))
        target = rng.randrange(n_options)
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": self.prompt(options, target)}],
                                                  tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"], self.letters[target]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="a world folder (its tokenizer and corpus)")
    parser.add_argument("--order", choices=["before", "after"], default="before")
    parser.add_argument("--two_options_until", type=int, default=0)
    parser.add_argument("--repeat_fraction", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--init", type=Path, help="an LM folder (with its tokenizer) to start from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not 0 <= args.repeat_fraction < 1:
        parser.error("--repeat_fraction must be in [0, 1)")
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.init or args.world / "tokenizer")
    task = ChoiceTask(tokenizer, args.order)
    tests = random.Random(f"held-out-{args.seed}")
    counts = [tests.randint(2, 4) for _ in range(400)]
    test = [task.example(tests, n, testing=True) for n in counts]
    if args.init:
        model = AutoModelForCausalLM.from_pretrained(args.init)
        size = {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
    else:
        model, size = demo_size_lm(tokenizer, args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    n_repeat = round(args.batch * args.repeat_fraction)
    repeats = RepeatedWords.from_corpus(args.world / "text" / "corpus.txt", tokenizer, args.batch * args.steps,
                                        args.seed) if n_repeat else None
    rng = random.Random(args.seed + 1)

    @torch.no_grad()
    def accuracy() -> float:
        model.eval()
        right = 0
        for start in range(0, len(test), 100):
            ids, mask = left_padded([seq for seq, _ in test[start : start + 100]], tokenizer.pad_token_id)
            picks = model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1)
            right += sum(p == letter for p, (_, letter) in zip(picks.tolist(), test[start : start + 100], strict=True))
        model.train()
        return right / len(test)

    curve, start = [], time.time()
    if args.steps == 0:
        curve.append({"step": 0, "held_out_accuracy": round(accuracy(), 4)})
    for step in range(1, args.steps + 1):
        most = 2 if step <= args.two_options_until else 4
        items = [task.example(rng, rng.randint(2, most), testing=False) for _ in range(args.batch - n_repeat)]
        ids, mask = left_padded([seq for seq, _ in items], tokenizer.pad_token_id)
        target = torch.tensor([letter for _, letter in items])
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits[:, -1], target)
        if repeats is not None:
            batch = collate([repeats[rng.randrange(len(repeats))] for _ in range(n_repeat)], tokenizer.pad_token_id)
            loss = loss + model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % args.eval_every == 0:
            curve.append({"step": step, "loss": round(loss.item(), 4), "held_out_accuracy": round(accuracy(), 4),
                          "seconds": round(time.time() - start, 1)})
            print(curve[-1], flush=True)
    report({**stamp(), "world": str(args.world), "init": str(args.init or "fresh"), "order": args.order,
            "two_options_until": args.two_options_until,
            "repeat_fraction": args.repeat_fraction, "steps": args.steps, "batch": args.batch, "lr": args.lr,
            "llm": size, "held_out_prompts": len(test),
            "chance": round(sum(1 / n for n in counts) / len(counts), 4), "curve": curve}, args.out)


if __name__ == "__main__":
    main()
