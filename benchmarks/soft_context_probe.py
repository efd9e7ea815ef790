"""Does an LM's "Is there a <shape>?" skill survive a change of context form, down to one vector per object?

A connector hands the LM one vector per image cell, not a sentence. This asks an LM POPE's question (chat
template and suffix) about the world's captions, with the context given as: the caption itself; an object
list ("Objects: a red star, ..."); bare words ("red star blue ring"); one soft vector per object (the sum of
its colour and shape word embeddings, or the shape's alone); and a nine-cell grid of such vectors in the
caption's cell order, zero for empty cells (what a perfect connector could produce). It reports accuracy
and "yes" share per form, over 300 captions with shapes, half the questions about a shape that is there.

    python benchmarks/soft_context_probe.py --lm LM --world runs/demo/world --out RESULT.json
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable
from pathlib import Path

import torch
from lm_existence_probe import SUFFIX, world_captions
from report import report, stamp
from sketch_lm import caption_cells, sketch, words_vector
from transformers import AutoModelForCausalLM, AutoTokenizer

from mllm.world.scene import COLOURS, SHAPES

OBJECT = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lm", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--captions", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.lm)
    model = AutoModelForCausalLM.from_pretrained(args.lm).eval()
    embed = model.get_input_embeddings()
    table = embed.weight.detach()
    captions = world_captions(args.world)
    random.Random(0).shuffle(captions)
    captions = [c for c in captions[: args.captions] if OBJECT.search(c)]
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def vectors(text: str) -> torch.Tensor:
        return table[ids(text)]

    def one(words: list[str]) -> torch.Tensor:
        return words_vector(embed, tokenizer, words)

    def grid(caption: str, with_colour: bool) -> torch.Tensor:
        return sketch(embed, tokenizer, {cell: (colour, shape) if with_colour else (shape,)
                                         for cell, colour, shape in caption_cells(caption)})

    forms: dict[str, Callable[[str, list[tuple[str, str]]], torch.Tensor]] = {
        "caption_text": lambda cap, objs: vectors(cap),
        "list_text": lambda cap, objs: vectors("Objects: " + ", ".join(f"a {c} {s}" for c, s in objs) + "."),
        "bare_words": lambda cap, objs: vectors(" ".join(f"{c} {s}" for c, s in objs)),
        "one_vector_colour_shape": lambda cap, objs: torch.stack([one([c, s]) for c, s in objs]),
        "one_vector_shape": lambda cap, objs: torch.stack([one([s]) for _, s in objs]),
        "grid9_shape": lambda cap, objs: grid(cap, False),
        "grid9_colour_shape": lambda cap, objs: grid(cap, True),
    }
    results = {}
    with torch.no_grad():
        for name, form in forms.items():
            right = said_yes = 0
            questions = random.Random(1)
            for caption in captions:
                objects = OBJECT.findall(caption)
                present = {s for _, s in objects}
                asks_present = questions.random() < 0.5
                shape = questions.choice(sorted(present) if asks_present else [s for s in SHAPES if s not in present])
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": f"\x00\nIs there a {shape} in the image?{SUFFIX}"}],
                    tokenize=False, add_generation_prompt=True)
                before, after = text.split("\x00")
                context = torch.cat([vectors(before), form(caption, objects), vectors(after)])
                logits = model(inputs_embeds=context[None]).logits[0, -1]
                pick = bool(logits[yes] > logits[no])
                right += pick == asks_present
                said_yes += pick
            results[name] = {"accuracy": round(right / len(captions), 3),
                             "share_yes": round(said_yes / len(captions), 3)}
    report({**stamp(), "lm": str(args.lm), "world": str(args.world), "questions": len(captions), "forms": results},
           args.out)


if __name__ == "__main__":
    main()
