"""How far can an LM get with perfect perception? The benchmarks' questions about sketches of their scenes.

A VLM's score is capped by what its LM can do with what the connector gives it. This draws fresh benchmark
scenes (each with a held-out colour-shape pair, as the mini-benchmarks' are; `--seen` for training-like
scenes), asks the world's MME, SEED, ScienceQA-IMG, GQA and POPE questions about them (up to two per scene
and benchmark, `--rows` per benchmark) with the benchmark's prompt, puts the scene's sketch where the image
goes (`sketch_lm.py`: per grid cell the sum of its colour and shape word embeddings, zero when empty), lets
the LM answer greedily and scores the answers as the benchmark does. The figures are the LM's ceiling with
a connector that reproduced the sketch exactly; compare them with the chance levels of the demo table.
`--signs` also draws sign scenes and asks TextVQA's and OCRBench's questions about them, the word (a
number's digits) and its colour in every cell of its row (`sketch_lm.py --signs`).

    python benchmarks/sketch_oracle_probe.py --lm runs/sketch_lm --out RESULT.json
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from report import report, stamp
from sketch_lm import sketch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mllm.data.conversation import encode_prompt
from mllm.eval.metrics import headline, score_benchmark
from mllm.eval.prompts import build_prompt
from mllm.llm import IMAGE_TOKEN
from mllm.world import language
from mllm.world.scene import SHAPES, Holdout, Scene, sample_scene
from mllm.world.sketches import scene_cells

FAMILIES = ("mme", "seed", "sqa_img", "gqa", "pope")
SIGN_FAMILIES = ("textvqa", "ocrbench")


def rows_of(family: str, scene: Scene, index: int, rng: random.Random) -> list[dict]:
    """Up to two of the family's rows about `scene`, with the id columns its scorer groups by."""
    made = (language.pope(scene, rng, "random", list(SHAPES)) if family == "pope"
            else getattr(language, family)(scene, rng))
    rows = []
    for j, doc in enumerate(made[:2]):
        row = {**doc, "question_id": f"{doc.get('category', 'all')}/{index}.jpg" if family == "mme" else f"{index}_{j}"}
        if family == "gqa":
            row["imageId"] = str(index)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lm", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=120)
    parser.add_argument("--seen", action="store_true", help="training-like scenes instead of benchmark-like ones")
    parser.add_argument("--signs", action="store_true", help="also TextVQA and OCRBench, about sign scenes")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.lm)
    model = AutoModelForCausalLM.from_pretrained(args.lm).eval()
    embed, image_id = model.get_input_embeddings(), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    holdout, rng = Holdout.sample(0), random.Random(args.seed)

    families = FAMILIES + (SIGN_FAMILIES if args.signs else ())
    rows: dict[str, list[dict]] = {f: [] for f in families}
    sketches: dict[str, list[torch.Tensor]] = {f: [] for f in families}
    index = 0
    with torch.no_grad():
        while min(len(r) for r in rows.values()) < args.rows:
            kind = "sign" if args.signs and index % 2 else "objects"
            scene = sample_scene(rng, kind, holdout, held_out=not args.seen)
            cells = sketch(embed, tokenizer, scene_cells(scene))
            for family in SIGN_FAMILIES if kind == "sign" else FAMILIES:
                for row in rows_of(family, scene, index, rng):
                    rows[family].append(row)
                    sketches[family].append(cells)
            index += 1
        scores, answers_seen = {}, {}
        for family in families:
            answers = []
            for row, cells in zip(rows[family], sketches[family], strict=True):
                ids = torch.tensor([encode_prompt(tokenizer, "<image>\n" + build_prompt(family, row), "chat", 9)])
                embeds = embed(ids).masked_scatter((ids == image_id).unsqueeze(-1), cells)
                out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id)
                answers.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
            scores[family] = round(headline(family, score_benchmark(family, rows[family], answers)), 1)
            answers_seen[family] = sorted(set(answers), key=answers.count, reverse=True)[:5]
    report({**stamp(), "lm": str(args.lm), "scenes": "training-like" if args.seen else "benchmark-like",
            "rows": {f: len(r) for f, r in rows.items()}, "scores": scores, "most_common_answers": answers_seen},
           args.out)


if __name__ == "__main__":
    main()
