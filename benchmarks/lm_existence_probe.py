"""How many steps does a from-scratch LM of the demo's size need to answer "Is there a X?" from its context?

POPE and MME need the LM to match a word of the question against its context; the demo's warmed-up LM does
not (lm_reading_probe.py). This trains a fresh Llama of the demo's size on that one skill: balanced
"<context> + Is there a <shape> in the image?" prompts, loss on the yes/no token only, and reports held-out
accuracy every `--eval_every` steps.

- `--context captions`: the world's dense captions (400 held out); `lists`: short object lists
  ("Objects: a red star, a blue ring.", 1 to `--max_objects` shapes; 400 fresh lists held out); `words`:
  bare "red star blue ring"; `mixed`: each example's context one of the three (captions held out), so the
  skill does not hang on one form (soft_context_probe.py).
- `--prompt chat`: the question as the benchmarks ask it (POPE's suffix, in the chat template); `bare`:
  "Is there a <shape> in the image?" right after the context, the answer predicted after its "?".
- `--repeat_fraction F`: that share of every batch is `RepeatedWords` documents (runs of the world's words
  and their repeat, next-token loss on the repeat), as `mllm pretrain-lm --repeat_fraction` mixes them in.
- `--warmup lists|copy --warmup_steps N`: N steps of object-list questions, or of repeats alone, first.
- `--size '{"num_layers": 2, "num_heads": 8}'`: another LM size than the demo's; `--device cuda` on a GPU.
- `--attention_init mimetic`: a fresh LM's attention starts as trained heads look (`mimetic_init_`).
- `--init LM`: start from an existing LM (with its own tokenizer); with `--steps 0` only score it.
  `--save DIR` keeps the trained LM; `--text_fraction F` gives that share of every batch to the world's corpus
  (next-token loss), so an LM started with `--init` keeps its captions while it learns the skill;
  `--text_with_reading` adds the world's reading conversations to that share (it keeps its answer formats).

    python benchmarks/lm_existence_probe.py --world runs/demo/world --context lists --prompt bare \
        --max_objects 2 --repeat_fraction 0.5 --steps 800 --eval_every 100 \
        --out benchmarks/results/lm_existence_probe_lists_bare_repeat.json

The committed `_lists_bare` run drops the repeats (`--repeat_fraction 0`); `_lists_chat_repeat` and
`_captions_bare_repeat` change `--prompt` or `--context` and run `--steps 1200`; `_lists4_chat_repeat` is
`_lists_chat_repeat` with `--max_objects 4`; `_lists4_chat_mimetic` and `_lists4_chat_mimetic_repeat` add
`--attention_init mimetic` to it, with `--repeat_fraction 0` and 0.5. `existence_device/run.sh long` runs six
variants on a GPU.
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
from torch.utils.data import ConcatDataset, Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mllm.data.images import ImageConfig
from mllm.data.llava_json import ConversationDataset, collate
from mllm.train_stages.language import LineCorpus, RepeatedWords
from mllm.world.scene import COLOURS, SHAPES

Example = tuple[list[int], bool]
REPO = Path(__file__).resolve().parents[1]
SUFFIX = "\nAnswer the question using a single word or phrase."


def world_captions(world: Path) -> list[str]:
    """The scene captions of the world's reading conversations (charts and word signs left out)."""
    records = json.loads((world / "text" / "reading.json").read_text())
    captions = [r["conversations"][0]["value"].split("\n")[0] for r in records]
    return sorted({c for c in captions if not c.startswith("A bar chart") and "written" not in c})


def object_list(rng: random.Random, max_objects: int = 3) -> str:
    shapes = rng.sample(SHAPES, rng.randint(1, max_objects))
    return "Objects: " + ", ".join(f"a {rng.choice(list(COLOURS))} {s}" for s in shapes) + "."


def object_words(rng: random.Random, max_objects: int = 4) -> str:
    """Objects as bare "<colour> <shape>" words, no syntax: the nearest text to one visual token per object."""
    return " ".join(f"{rng.choice(list(COLOURS))} {s}" for s in rng.sample(SHAPES, rng.randint(1, max_objects)))


class ExistenceTask:
    """Balanced existence prompts, in the chat template as the benchmarks ask them or bare."""

    def __init__(self, tokenizer: object, chat: bool = True) -> None:
        self.tokenizer, self.chat = tokenizer, chat
        self.yes, self.no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))

    def example(self, context: str, rng: random.Random) -> Example:
        present = [s for s in SHAPES if f" {s}" in context]
        asks_present = bool(present) and rng.random() < 0.5
        shape = rng.choice(present if asks_present else [s for s in SHAPES if s not in present])
        question = f"{context}\nIs there a {shape} in the image?"
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": question + SUFFIX}],
                                                      tokenize=False, add_generation_prompt=True)
        else:
            text = self.tokenizer.bos_token + question
        return self.tokenizer(text, add_special_tokens=False)["input_ids"], asks_present

    def batch(self, items: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ids, their mask, and the yes/no target of the last position."""
        ids, mask = left_padded([seq for seq, _ in items], self.tokenizer.pad_token_id)
        return ids, mask, torch.tensor([self.yes if answer else self.no for _, answer in items])


def left_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences padded on the left (so that every last position is a prompt's end), and their mask."""
    length = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), length), pad_id)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, length - len(seq):], mask[row, length - len(seq):] = torch.tensor(seq), 1
    return ids, mask


def demo_size_lm(tokenizer: object, seed: int, overrides: dict | None = None) -> tuple[LlamaForCausalLM, dict]:
    """A fresh Llama of the demo's LM size (configs/demo.yaml, with `overrides`), seeded, and that size."""
    overrides = overrides or {}
    size = {**yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["language"]["llm"], **overrides}
    size["num_kv_heads"] = overrides.get("num_kv_heads", size["num_heads"])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size["hidden_size"], intermediate_size=size["intermediate_size"],
        num_hidden_layers=size["num_layers"], num_attention_heads=size["num_heads"],
        num_key_value_heads=size["num_kv_heads"], max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id))
    return model, size


def _factor(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`left` (d x rank) and `right` (rank x d) whose product is the best rank-`rank` approximation."""
    u, s, vh = torch.linalg.svd(matrix)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


@torch.no_grad()
def mimetic_init_(model: LlamaForCausalLM, seed: int, qk: tuple[float, float] = (0.7, 0.7),
                  vo: tuple[float, float] = (0.4, 0.4)) -> None:
    """Mimetic initialisation (Trockman & Kolter, 2023): each head's W_q^T W_k starts at a Z + b I and its
    W_o W_v at a' Z' - b' I (Z Gaussian with variance 1/d), factored to the head's rank, as trained heads
    look; in vision transformers it shortens training on small data. Multi-head layers only."""
    generator = torch.Generator().manual_seed(seed)
    for layer in model.model.layers:
        attention = layer.self_attn
        d, head_dim = attention.q_proj.in_features, attention.head_dim
        for h in range(attention.q_proj.out_features // head_dim):
            rows, eye = slice(h * head_dim, (h + 1) * head_dim), torch.eye(d)
            query, key = _factor(qk[0] * (torch.randn(d, d, generator=generator) / d**0.5) + qk[1] * eye, head_dim)
            attention.q_proj.weight[rows], attention.k_proj.weight[rows] = query.T, key
            out, value = _factor(vo[0] * (torch.randn(d, d, generator=generator) / d**0.5) - vo[1] * eye, head_dim)
            attention.v_proj.weight[rows], attention.o_proj.weight[:, rows] = value, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--context", choices=["captions", "lists", "words", "mixed"], default="captions")
    parser.add_argument("--prompt", choices=["chat", "bare"], default="chat")
    parser.add_argument("--max_objects", type=int, default=3)
    parser.add_argument("--repeat_fraction", type=float, default=0.0)
    parser.add_argument("--text_fraction", type=float, default=0.0)
    parser.add_argument("--text_with_reading", action="store_true",
                        help="the text share also draws the world's reading conversations (every question family)")
    parser.add_argument("--warmup", choices=["none", "lists", "copy"], default="none")
    parser.add_argument("--warmup_steps", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval_every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", type=Path, help="save the trained LM and its tokenizer here")
    parser.add_argument("--init", type=Path, help="an LM folder (with its tokenizer) to start from; --steps 0 "
                        "only scores it")
    parser.add_argument("--size", type=json.loads, default={},
                        help='overrides of the demo LM size, e.g. \'{"num_layers": 4, "num_heads": 4}\'')
    parser.add_argument("--attention_init", choices=["default", "mimetic"], default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not 0 <= args.repeat_fraction + args.text_fraction < 1 or min(args.repeat_fraction, args.text_fraction) < 0:
        parser.error("--repeat_fraction and --text_fraction must be >= 0 and leave part of each batch to the task")
    if args.text_with_reading and not args.text_fraction:
        parser.error("--text_with_reading needs a --text_fraction")
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.init or args.world / "tokenizer")
    task = ExistenceTask(tokenizer, chat=args.prompt == "chat")
    captions = world_captions(args.world)
    random.Random(args.seed).shuffle(captions)
    if args.context in ("lists", "words"):
        lists = random.Random(f"held-out-{args.seed}")
        make = object_list if args.context == "lists" else object_words
        held_out, train = [make(lists, args.max_objects) for _ in range(400)], []
    else:
        held_out, train = captions[:400], captions[400:]
    test = [task.example(c, random.Random(i)) for i, c in enumerate(held_out)]
    if args.init:
        model = AutoModelForCausalLM.from_pretrained(args.init)
        size = {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
    else:
        model, size = demo_size_lm(tokenizer, args.seed, args.size)
        if args.attention_init == "mimetic":
            mimetic_init_(model, args.seed)
    model = model.to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
    repeats = None
    if args.repeat_fraction or args.warmup == "copy":
        repeats = RepeatedWords.from_corpus(args.world / "text" / "corpus.txt", tokenizer,
                                            count=args.batch * (args.warmup_steps + args.steps), seed=args.seed)
    rng = random.Random(args.seed + 1)

    @torch.no_grad()
    def accuracy() -> tuple[float, float]:
        model.eval()
        picks = []
        for start in range(0, len(test), 100):
            ids, mask, _ = task.batch(test[start : start + 100])
            logits = model(input_ids=ids.to(args.device), attention_mask=mask.to(args.device)).logits[:, -1]
            picks += (logits[:, task.yes] > logits[:, task.no]).tolist()
        model.train()
        right = sum(pick == answer for pick, (_, answer) in zip(picks, test, strict=True))
        return right / len(test), sum(picks) / len(picks)

    def existence_loss(source: Callable[[], str], size: int) -> torch.Tensor:
        ids, mask, target = (t.to(args.device) for t in task.batch([task.example(source(), rng) for _ in range(size)]))
        return torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits[:, -1], target)

    def lm_loss(documents: Dataset, size: int) -> torch.Tensor:
        """Next-token loss (on the labelled tokens) over `size` documents drawn from `documents`."""
        batch = collate([documents[rng.randrange(len(documents))] for _ in range(size)], tokenizer.pad_token_id)
        return model(**{k: v.to(args.device) for k, v in batch.items()}).loss

    corpus: Dataset | None = None
    if args.text_fraction:
        corpus = LineCorpus(args.world / "text" / "corpus.txt", tokenizer, 256)
        if args.text_with_reading:
            corpus = ConcatDataset([corpus, ConversationDataset(args.world / "text" / "reading.json", None, tokenizer,
                                                                 ImageConfig(), "chat", 0, 256)])

    def context() -> str:
        kind = rng.choice(["captions", "lists", "words"]) if args.context == "mixed" else args.context
        if kind == "lists":
            return object_list(rng, args.max_objects)
        return object_words(rng, args.max_objects) if kind == "words" else rng.choice(train)

    n_repeat = round(args.batch * args.repeat_fraction)
    n_text = round(args.batch * args.text_fraction)

    curve, start = [], time.time()
    if args.steps == 0:
        acc, share_yes = accuracy()
        curve.append({"step": 0, "held_out_accuracy": round(acc, 4), "share_yes": round(share_yes, 4)})
    for step in range(1, args.warmup_steps + args.steps + 1):
        warming = step <= args.warmup_steps
        if warming and args.warmup == "copy":
            loss = lm_loss(repeats, args.batch)
        elif warming and args.warmup == "lists":
            loss = existence_loss(lambda: object_list(rng, args.max_objects), args.batch)
        else:
            loss = existence_loss(context, args.batch - n_repeat - n_text)
            if n_repeat:
                loss = loss + lm_loss(repeats, n_repeat)
            if n_text:
                loss = loss + lm_loss(corpus, n_text)
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
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
    report({**stamp(), "world": str(args.world), "init": str(args.init or "fresh"),
            "attention_init": args.attention_init, "context": args.context, "prompt": args.prompt,
            "max_objects": args.max_objects, "repeat_fraction": args.repeat_fraction,
            "text_fraction": args.text_fraction, "text_with_reading": args.text_with_reading, "warmup": args.warmup,
            "warmup_steps": args.warmup_steps, "steps": args.steps, "batch": args.batch, "lr": args.lr, "llm": size,
            "held_out_questions": len(test), "share_yes_in_held_out": round(sum(a for _, a in test) / len(test), 4),
            "curve": curve}, args.out)


if __name__ == "__main__":
    main()
