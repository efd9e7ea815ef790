"""Teach an LM to read scene sketches, so that a connector has a word-like target to learn.

A pretrained LLM matches a question's word against its context whatever the context's form; the world's
LM learns that skill only in the form it was taught (`soft_context_probe.py`: an LM answering "Is there a
star?" about captions 82% of the time drops to chance when each object is one vector). A sketch puts the
image's layout into the LM's own terms: nine vectors in the prompt's image positions, one per grid cell,
each the sum of its object's colour and shape word embeddings (zero for an empty cell). This trains the LM
on the world's align captions, instruction conversations and one-turn POPE questions about training scenes
with their sketch where the image goes, beside the corpus and reading conversations (`--text`) and
`RepeatedWords` (the rest), and reports every `--eval_every` steps, on 10% of the scenes held out: POPE
accuracy (yes/no pick), caption and instruction loss, and the instructions' multiple-choice questions answered
with the right letter (`choice`, teacher-forced pick among A-D; `choice_top_letter`: the most picked letter's
share). `--steps 0` with an LM in `--init` only scores it. Needs the world's `stage_data/existence_single.json`
(`existence_device/prepare.py`). Then `mllm train --connector ln_mlp2x_gelu --llm.path SAVED` (the LM
frozen in align) gives the connector a caption loss it can follow: each caption word is read off a cell.

    python benchmarks/sketch_lm.py --init LM_OR_TOKENIZER [--fresh] --world runs/demo/world --steps 800 \
        --save runs/sketch_lm

`--fresh` starts a demo-sized LM (`--size` overrides it) from the tokenizer in `--init`; `--existence_weight`
makes POPE questions more (or less) of the sketch steps than a third; `--signs` sketches sign scenes too (the
word in its row) and scores held-out reading questions (the whole answer right, teacher-forced), and
`--reading_weight` makes one-turn reading questions (`stage_data/reading_single.json`, written if missing)
that share of the sketch steps, and `--choice_weight` the same for one-turn multiple-choice questions
(`stage_data/choice_single.json`, written if missing); `--one_object_steps N` asks the first N steps' POPE
questions about one-object scenes only (a curriculum: one cell to compare before nine); `--side 6` lays
sketches out for a /16 tower's 36 image tokens.
`sketch_device/run.sh` runs it on a GPU.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
import yaml
from reading_probe import write_stage_data
from torch import nn
from torch.utils.data import ConcatDataset, Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mllm.data.conversation import IGNORE_INDEX
from mllm.data.images import ImageConfig
from mllm.data.llava_json import ConversationDataset, collate
from mllm.llm import IMAGE_TOKEN
from mllm.train_stages.language import LineCorpus, RepeatedWords
from mllm.world.scene import POSITIONS, ROWS
from mllm.world.sketches import sign_cells

REPO = Path(__file__).resolve().parents[1]
CHOICE = re.compile(r"Answer with the option's letter")
CELL = re.compile(r"(" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + r"): a (?:small|large) (\w+) (\w+)\.",
                  re.IGNORECASE)
SIGN = re.compile(r"(Top|Middle|Bottom): the (?:word|number) (\w+) in (\w+)\.")
Scene = list[tuple[int, str, str]]  # (cell, colour, shape)
Cells = dict[int, Sequence[str]]  # grid cell -> the words its sketch vector sums


def caption_cells(caption: str) -> Scene:
    """(cell, colour, shape) of every object a dense caption places ("Top left: a small red star.")."""
    return [(POSITIONS.index(p.lower()), c, s) for p, c, s in CELL.findall(caption)]


def scenes_of(align: Path, signs: bool = False) -> dict[str, Cells]:
    """Image path -> the words of each cell of its sketch, read off the align captions: each object's colour
    and shape. Charts are left out; so are signs' words unless `signs`, which puts the word (a number's
    digits) and its colour in every cell of its row and takes in scenes that hold nothing but the sign."""
    out = {}
    for record in json.loads(align.read_text()):
        caption = record["conversations"][1]["value"]
        if signs and caption.startswith("A bar chart"):
            continue
        if not signs and not (re.match(r"^\w+ objects?\.", caption) and "sign" not in caption
                              and "written" not in caption):
            continue
        cells: Cells = {cell: (colour, shape) for cell, colour, shape in caption_cells(caption)}
        for row, text, colour in SIGN.findall(caption) if signs else []:
            cells.update(sign_cells(text, colour, ROWS.index(row.lower())))
        out[record["image"]] = cells
    return out


def words_vector(embed: nn.Embedding, tokenizer: object, words: Sequence[str]) -> torch.Tensor:
    """The sum of the input embeddings of `words`, each tokenised with its leading space."""
    ids = [i for word in words for i in tokenizer(" " + word, add_special_tokens=False)["input_ids"]]
    return embed(torch.tensor(ids, device=embed.weight.device)).sum(0)


def sketch(embed: nn.Embedding, tokenizer: object, cells: Mapping[int, Sequence[str]], side: int = 3) -> torch.Tensor:
    """A scene's sketch: one vector per grid cell, the words_vector of the cell's words, zero when empty; with
    `side` 6 (a /16 tower's 6 x 6 tokens at 96 px) each cell's vector fills its 2 x 2 positions, row-major."""
    out = torch.zeros(9, embed.embedding_dim, device=embed.weight.device, dtype=embed.weight.dtype)
    for cell, words in cells.items():
        out[cell] = words_vector(embed, tokenizer, words)
    k = side // 3
    return out.view(3, 3, -1).repeat_interleave(k, 0).repeat_interleave(k, 1).flatten(0, 1)


class SketchData:
    """A LLaVA JSON file encoded for the LM, its shape-scene samples split into training and held-out."""

    def __init__(self, path: Path, fmt: str, world: Path, tokenizer: object, held: set[str],
                 scenes: dict[str, Cells], side: int = 3) -> None:
        self.data = ConversationDataset(path, world / "images", tokenizer, ImageConfig(), fmt, side * side, 256)
        self.images = [str(Path(s.image).relative_to(world / "images")) if s.image else None
                       for s in self.data.samples]
        usable = [i for i, image in enumerate(self.images) if image in scenes]
        self.train = [i for i in usable if self.images[i] not in held]
        self.held_out = [i for i in usable if self.images[i] in held]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init", type=Path, required=True, help="an LM folder, or a tokenizer with --fresh")
    parser.add_argument("--fresh", action="store_true", help="a new demo-sized LM instead of --init's")
    parser.add_argument("--size", type=json.loads, default={},
                        help='overrides of the --fresh LM size, e.g. \'{"hidden_size": 256, "num_layers": 4}\'')
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sketch", type=float, default=0.5, help="share of each batch with a sketch")
    parser.add_argument("--text", type=float, default=0.25, help="share of corpus and reading conversations")
    parser.add_argument("--existence_weight", type=float, default=1 / 3,
                        help="chance that a step's sketch share is POPE questions (else align or instruct alike)")
    parser.add_argument("--signs", action="store_true", help="sketch sign scenes too: the word in its row's cells")
    parser.add_argument("--reading_weight", type=float, default=0.0,
                        help="chance that a step's sketch share is reading questions (needs --signs)")
    parser.add_argument("--choice_weight", type=float, default=0.0,
                        help="chance that a step's sketch share is one-turn multiple-choice questions")
    parser.add_argument("--one_object_steps", type=int, default=0,
                        help="steps whose POPE questions are about one-object scenes only (existence_1obj.json)")
    parser.add_argument("--side", type=int, default=3, choices=(3, 6),
                        help="image tokens per side: 3 for the demo's /32 tower at 96 px, 6 for a /16 one")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, batches and repeats (not the split)")
    parser.add_argument("--eval_every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    if not (0 < args.sketch and args.sketch + args.text <= 1):
        parser.error("--sketch must be > 0 and --sketch + --text <= 1")
    if args.size and not args.fresh:
        parser.error("--size sets the size of a --fresh LM")
    if args.reading_weight and not args.signs:
        parser.error("--reading_weight needs --signs: without them no reading question has a sketch")
    if args.existence_weight + args.reading_weight + args.choice_weight > 1:
        parser.error("--existence_weight + --reading_weight + --choice_weight must be <= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng, device, world = random.Random(args.seed), torch.device(args.device), args.world
    tokenizer = AutoTokenizer.from_pretrained(args.init)
    if args.fresh:
        size = {**yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["language"]["llm"], **args.size}
        size["num_kv_heads"] = args.size.get("num_kv_heads", size["num_heads"])
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=size["hidden_size"], intermediate_size=size["intermediate_size"],
            num_hidden_layers=size["num_layers"], num_attention_heads=size["num_heads"],
            num_key_value_heads=size["num_kv_heads"], max_position_embeddings=512, tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id))
    else:
        model = AutoModelForCausalLM.from_pretrained(args.init)
    model.to(device)
    embed, image_id = model.get_input_embeddings(), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    scenes = scenes_of(world / "stage_data" / "align.json", args.signs)
    keys = sorted(scenes)
    random.Random(1).shuffle(keys)
    held = set(keys[: len(keys) // 10])
    files = [("align", "align.json", "plain"), ("instruct", "instruct.json", "chat"),
             ("existence", "existence_single.json", "chat")]
    if args.signs:
        if not (world / "stage_data" / "reading_single.json").is_file():
            write_stage_data(world)
        files.append(("reading", "reading_single.json", "chat"))
    if args.choice_weight:
        if not (world / "stage_data" / "choice_single.json").is_file():
            write_stage_data(world, CHOICE, "choice_single.json")
        files.append(("choice", "choice_single.json", "chat"))
    sets = {name: SketchData(world / "stage_data" / file, fmt, world, tokenizer, held, scenes, args.side)
            for name, file, fmt in files}
    kinds = [k for k in sets if k != "reading" or args.reading_weight]  # one_object stands in for existence early
    if args.one_object_steps:
        sets["one_object"] = SketchData(world / "stage_data" / "existence_1obj.json", "chat", world, tokenizer, held,
                                        scenes, args.side)

    def sketch_batch(name: str, indices: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Encoded samples (their images are never read: the sketch stands in for them) and their embeddings."""
        data = sets[name]
        items = [{"input_ids": torch.tensor(s.input_ids), "labels": torch.tensor(s.labels)}
                 for s in (data.data.samples[i] for i in indices)]
        batch = {k: v.to(device) for k, v in collate(items, tokenizer.pad_token_id).items()}
        sketches = torch.cat([sketch(embed, tokenizer, scenes[data.images[i]], args.side) for i in indices])
        embeds = embed(batch["input_ids"]).masked_scatter((batch["input_ids"] == image_id).unsqueeze(-1), sketches)
        return embeds, batch

    def sketch_loss(name: str, indices: list[int]) -> torch.Tensor:
        embeds, batch = sketch_batch(name, indices)
        return model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

    def text_loss(documents: Dataset, size: int) -> torch.Tensor:
        batch = collate([documents[rng.randrange(len(documents))] for _ in range(size)], tokenizer.pad_token_id)
        return model(**{k: v.to(device) for k, v in batch.items()}).loss

    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    letters = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "ABCD"]

    def letter_answers(labels: torch.Tensor) -> list[int]:
        """Positions of answers that are one option letter (the letter, then at most the end-of-turn tokens)."""
        out = []
        answer = (labels != IGNORE_INDEX).tolist()
        for p in range(1, len(answer)):
            if answer[p] and not answer[p - 1] and int(labels[p]) in letters:
                end = p
                while end + 1 < len(answer) and answer[end + 1]:
                    end += 1
                if end - p <= 2:  # the letter, <|im_end|>, newline
                    out.append(p)
        return out

    def held_out_rows(name: str, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, labels) of each held-out sample of `sets[name]`, in batches of 64."""
        held_out = sets[name].held_out[:limit]
        for start in range(0, len(held_out), 64):
            embeds, batch = sketch_batch(name, held_out[start : start + 64])
            logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
            yield from zip(logits, batch["labels"], strict=True)

    @torch.no_grad()
    def evaluate() -> tuple[float, dict[str, float]]:
        """Held-out POPE accuracy (yes/no pick), caption and instruction losses, the multiple-choice questions of
        the held-out instructions answered with the right letter (teacher-forced pick among A-D) and the share
        of the most picked letter, and with --signs the share of reading questions whose whole answer is the
        model's top pick at every token (teacher-forced)."""
        model.eval()
        picks = []
        for logits, labels in held_out_rows("existence"):
            answer = int((labels != IGNORE_INDEX).nonzero()[0, 0])
            picks.append((yes if logits[answer - 1, yes] > logits[answer - 1, no] else no) == int(labels[answer]))
        scores = {name: round(sketch_loss(name, sets[name].held_out[:128]).item(), 3) for name in ("align", "instruct")}
        if "reading" in sets:
            right = [bool((logits[:-1].argmax(-1) == labels[1:])[labels[1:] != IGNORE_INDEX].all())
                     for logits, labels in held_out_rows("reading", 256)]
            scores["reading"] = round(sum(right) / len(right), 3)
        picked, truth = [], []
        for logits, labels in held_out_rows("instruct", 512):
            for p in letter_answers(labels):
                picked.append(letters[int(logits[p - 1, letters].argmax())])
                truth.append(int(labels[p]))
        if truth:
            scores["choice"] = round(sum(a == b for a, b in zip(picked, truth, strict=True)) / len(truth), 3)
            scores["choice_top_letter"] = round(max(map(picked.count, letters)) / len(picked), 3)
            scores["choice_questions"] = len(truth)
        model.train()
        return round(sum(picks) / len(picks), 3), scores

    corpus = ConcatDataset([LineCorpus(world / "text" / "corpus.txt", tokenizer, 256),
                            ConversationDataset(world / "text" / "reading.json", None, tokenizer, ImageConfig(),
                                                "chat", 0, 256)])
    repeats = RepeatedWords.from_corpus(world / "text" / "corpus.txt", tokenizer, count=args.batch * args.steps,
                                       seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    n_sketch, n_text = round(args.batch * args.sketch), round(args.batch * args.text)
    n_repeat = args.batch - n_sketch - n_text
    share = (1 - args.existence_weight - args.reading_weight - args.choice_weight) / 2
    weights = [share, share, args.existence_weight] + ([args.reading_weight] if args.reading_weight else []) + (
        [args.choice_weight] if args.choice_weight else [])
    if abs(args.existence_weight - 1 / 3) < 1e-9 and not args.reading_weight and not args.choice_weight:
        weights = None  # uniform, as before --existence_weight: same draws as the runs recorded that way
    print({name: (len(d.train), len(d.held_out)) for name, d in sets.items()}, flush=True)
    print("step 0", evaluate(), flush=True)
    start = time.time()
    for step in range(1, args.steps + 1):
        name = rng.choice(kinds) if weights is None else rng.choices(kinds, weights)[0]
        if name == "existence" and step <= args.one_object_steps:
            name = "one_object"
        loss = sketch_loss(name, rng.sample(sets[name].train, n_sketch))
        if n_text:
            loss = loss + text_loss(corpus, n_text)
        if n_repeat:
            loss = loss + text_loss(repeats, n_repeat)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % args.eval_every == 0:
            print("step", step, round(loss.item(), 3), evaluate(), round(time.time() - start), flush=True)
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)


if __name__ == "__main__":
    main()
