"""Stage data of POPE questions alone, to ask whether a VLM can learn "Is there a <shape>?" at all.

The dense caption of every training image (the alignment data) says which shapes are there. Questions use
POPE's prompt and are balanced, "yes" and "no" alike:

- `--balance image`: each image gets two or four questions, half about a shape it has, half about one it
  lacks (so shapes common in training are asked about with "yes" more often, a prior a model can use);
- `--balance shape`: for every shape, `--per_shape` questions about images that have it and as many about
  images that lack it (at most four an image), so the shape asked about says nothing of the answer.

`--repeats N` adds N text-only "Repeat: <words>" conversations (runs of the world's words, answered by the
same run), the match-and-copy practice of `mllm pretrain-lm --repeat_fraction`, inside the VLM stage.
`existence_stage.yaml` trains on the file after a caption stage; `mllm eval run --benchmarks pope,mme`
scores the result.

    python benchmarks/existence_stage.py --world runs/demo/world --out runs/demo/world/stage_data/existence.json
    mllm train --config benchmarks/existence_stage.yaml
    mllm eval run --model runs/existence/existence/model --data runs/demo/world/benchmarks \
        --benchmarks pope,mme --out runs/existence/eval
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from mllm.data.llava_json import load_records
from mllm.eval.prompts import build_prompt
from mllm.train_stages.language import corpus_words
from mllm.world.scene import SHAPES

Record = dict[str, Any]


def _shapes(record: Record) -> set[str]:
    caption = record["conversations"][1]["value"]
    return {s for s in SHAPES if f" {s}." in caption}


def _conversation(record: Record, asked: list[tuple[str, str]]) -> Record:
    turns = []
    for i, (shape, answer) in enumerate(asked):
        question = build_prompt("pope", {"question": f"Is there a {shape} in the image?"})
        turns += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + question},
                  {"from": "gpt", "value": answer}]
    return {"id": record["id"], "image": record["image"], "conversations": turns}


def existence_records(align: list[Record], seed: int = 0) -> list[Record]:
    """Two or four questions an image with shapes, half "yes"."""
    rng = random.Random(seed)
    records = []
    for record in align:
        shapes = _shapes(record)
        present = [s for s in SHAPES if s in shapes]
        if not present:
            continue
        absent = [s for s in SHAPES if s not in present]
        asked = [pair for _ in range(rng.choice((1, 2)))
                 for pair in ((rng.choice(present), "yes"), (rng.choice(absent), "no"))]
        rng.shuffle(asked)
        records.append(_conversation(record, asked))
    return records


def shape_balanced_records(align: list[Record], per_shape: int, seed: int = 0) -> list[Record]:
    """For every shape, `per_shape` questions about images that have it and as many about images that lack it."""
    rng = random.Random(seed)
    scenes = [(record, shapes) for record in align if (shapes := _shapes(record))]
    asked: dict[str, tuple[Record, list[tuple[str, str]]]] = {}
    for shape in SHAPES:
        for answer in ("yes", "no"):
            pool = [record for record, shapes in scenes if (shape in shapes) == (answer == "yes")]
            for record in rng.choices(pool, k=per_shape):
                asked.setdefault(record["id"], (record, []))[1].append((shape, answer))
    records = []
    for record, questions in asked.values():
        rng.shuffle(questions)
        records.append(_conversation(record, questions[:4]))
    return records


def repeat_records(words: list[str], count: int, seed: int = 0) -> list[Record]:
    """Text-only conversations asking to repeat a run of 4 to 12 words."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        run = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
        records.append({"id": f"repeat-{i}", "conversations": [{"from": "human", "value": f"Repeat: {run}"},
                                                              {"from": "gpt", "value": run}]})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--balance", choices=["image", "shape"], default="image")
    parser.add_argument("--per_shape", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    align = load_records(args.world / "stage_data" / "align.json")
    records = (existence_records(align, args.seed) if args.balance == "image"
               else shape_balanced_records(align, args.per_shape, args.seed))
    questions = sum(len(r["conversations"]) // 2 for r in records)
    records += repeat_records(corpus_words(args.world / "text" / "corpus.txt"), args.repeats, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1))
    print(f"existence stage data: {questions} questions about {len(records) - args.repeats} images, "
          f"{args.repeats} repeat conversations -> {args.out}")


if __name__ == "__main__":
    main()
