"""How many steps does a from-scratch LM of the demo's size need to answer "Is there a X?" from a caption?

POPE and MME need the LM to match a word of the question against its context; the demo's warmed-up LM does
not (lm_reading_probe.py). This trains a fresh Llama of the demo's size on that one skill alone: balanced
"caption + Is there a <shape> in the image?" prompts built from the world's captions, loss on the yes/no
token only, and reports held-out accuracy (on captions never trained on) every `--eval_every` steps. An
optional warm-up comes first:

- `lists`: the same questions about short object lists ("Objects: a red star, a blue ring."), a curriculum;
- `copy`: random sequences of the world's words followed by their repeat, next-token loss on the repeat,
  the task that forms induction (match-and-copy) heads quickly in small transformers.

    python benchmarks/lm_existence_probe.py --world runs/demo/world --warmup copy --warmup_steps 600 \
        --steps 1400 --out benchmarks/results/lm_existence_probe_copy.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from report import report, stamp
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mllm.world.scene import COLOURS, SHAPES

Example = tuple[list[int], bool]
REPO = Path(__file__).resolve().parents[1]


def world_captions(world: Path) -> list[str]:
    """The scene captions of the world's reading conversations (charts and word signs left out)."""
    records = json.loads((world / "text" / "reading.json").read_text())
    captions = [r["conversations"][0]["value"].split("\n")[0] for r in records]
    return sorted({c for c in captions if not c.startswith("A bar chart") and "written" not in c})


def object_list(rng: random.Random) -> str:
    shapes = rng.sample(SHAPES, rng.randint(1, 3))
    return "Objects: " + ", ".join(f"a {rng.choice(list(COLOURS))} {s}" for s in shapes) + "."


class ExistenceTask:
    """Balanced existence prompts rendered with the world tokenizer's chat template, as the benchmarks ask."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer
        self.yes, self.no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))

    def example(self, caption: str, rng: random.Random) -> Example:
        present = [s for s in SHAPES if f" {s}" in caption]
        asks_present = bool(present) and rng.random() < 0.5
        shape = rng.choice(present if asks_present else [s for s in SHAPES if s not in present])
        question = f"{caption}\nIs there a {shape} in the image?\nAnswer the question using a single word or phrase."
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"], asks_present

    def batch(self, items: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ids, their mask, and the yes/no target of the last position."""
        length = max(len(ids) for ids, _ in items)
        ids = torch.full((len(items), length), self.tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for row, (seq, _) in enumerate(items):
            ids[row, length - len(seq):], mask[row, length - len(seq):] = torch.tensor(seq), 1
        return ids, mask, torch.tensor([self.yes if answer else self.no for _, answer in items])


def copy_batch(tokenizer: object, words: list[list[int]], rng: random.Random, size: int) -> dict[str, torch.Tensor]:
    """Random word sequences followed by their repeat; only the repeat is predicted."""
    sequences = []
    for _ in range(size):
        half = [t for _ in range(rng.randint(8, 16)) for t in rng.choice(words)]
        sequences.append(([tokenizer.bos_token_id] + half + half, 1 + len(half)))
    length = max(len(s) for s, _ in sequences)
    ids = torch.full((size, length), tokenizer.pad_token_id)
    labels = torch.full((size, length), -100)
    for row, (seq, start) in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, start : len(seq)] = torch.tensor(seq[start:])
    return {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).long(), "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--warmup", choices=["none", "lists", "copy"], default="none")
    parser.add_argument("--warmup_steps", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval_every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.world / "tokenizer")
    task = ExistenceTask(tokenizer)
    captions = world_captions(args.world)
    random.Random(args.seed).shuffle(captions)
    held_out, train = captions[:400], captions[400:]
    test = [task.example(c, random.Random(i)) for i, c in enumerate(held_out)]
    size = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["language"]["llm"]
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size["hidden_size"], intermediate_size=size["intermediate_size"],
        num_hidden_layers=size["num_layers"], num_attention_heads=size["num_heads"],
        num_key_value_heads=size["num_kv_heads"], max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
    words = [tokenizer(" " + w, add_special_tokens=False)["input_ids"]
             for w in sorted({w.strip(".,:") for c in captions for w in c.split()})]
    rng = random.Random(args.seed + 1)

    @torch.no_grad()
    def accuracy() -> tuple[float, float]:
        model.eval()
        picks = []
        for start in range(0, len(test), 100):
            ids, mask, _ = task.batch(test[start : start + 100])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]
            picks += (logits[:, task.yes] > logits[:, task.no]).tolist()
        model.train()
        right = sum(pick == answer for pick, (_, answer) in zip(picks, test, strict=True))
        return right / len(test), sum(picks) / len(picks)

    def existence_loss(source: Callable[[], str]) -> torch.Tensor:
        ids, mask, target = task.batch([task.example(source(), rng) for _ in range(args.batch)])
        return torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits[:, -1], target)

    curve, start = [], time.time()
    for step in range(1, args.warmup_steps + args.steps + 1):
        warming = step <= args.warmup_steps
        if warming and args.warmup == "copy":
            loss = model(**copy_batch(tokenizer, words, rng, args.batch)).loss
        elif warming and args.warmup == "lists":
            loss = existence_loss(lambda: object_list(rng))
        else:
            loss = existence_loss(lambda: rng.choice(train))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % args.eval_every == 0:
            acc, share_yes = accuracy()
            curve.append({"step": step, "phase": "warmup" if warming else "existence", "loss": round(loss.item(), 4),
                          "held_out_accuracy": round(acc, 4), "share_yes": round(share_yes, 4),
                          "seconds": round(time.time() - start, 1)})
            print(curve[-1], flush=True)
    report({**stamp(), "world": str(args.world), "warmup": args.warmup, "warmup_steps": args.warmup_steps,
            "steps": args.steps, "batch": args.batch, "lr": args.lr, "llm": size,
            "held_out_questions": len(test), "share_yes_in_held_out": round(sum(a for _, a in test) / len(test), 4),
            "curve": curve}, args.out)


if __name__ == "__main__":
    main()
