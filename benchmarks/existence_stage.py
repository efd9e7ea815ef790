"""Stage data of POPE questions alone, to ask whether a VLM can learn "Is there a <shape>?" at all.

For every training image of a world with shapes, its dense caption (the alignment data) says which shapes
are there; each image gets two or four balanced questions in POPE's prompt (half about a shape that is
there, half about one that is not), as LLaVA-format conversations. `existence_stage.yaml` trains on them
after a caption stage; the result is scored with `mllm eval run --benchmarks pope,mme`.

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
from mllm.world.scene import SHAPES


def existence_records(align: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for record in align:
        caption = record["conversations"][1]["value"]
        present = [s for s in SHAPES if f" {s}." in caption]
        if not present:
            continue
        absent = [s for s in SHAPES if s not in present]
        asked = [pair for _ in range(rng.choice((1, 2)))
                 for pair in ((rng.choice(present), "yes"), (rng.choice(absent), "no"))]
        rng.shuffle(asked)
        turns = []
        for i, (shape, answer) in enumerate(asked):
            question = build_prompt("pope", {"question": f"Is there a {shape} in the image?"})
            turns += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + question},
                      {"from": "gpt", "value": answer}]
        records.append({"id": record["id"], "image": record["image"], "conversations": turns})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records = existence_records(load_records(args.world / "stage_data" / "align.json"), args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1))
    questions = sum(len(r["conversations"]) // 2 for r in records)
    print(f"existence stage data: {len(records)} images, {questions} questions -> {args.out}")


if __name__ == "__main__":
    main()
