"""Stage and text data of the device runs (run.sh), written into the world folder they train on.

From `stage_data/existence.json` (existence_stage.py, `--balance image`, seed 0) and the align captions:
- `stage_data/existence_single.json`: each of its questions as a one-turn record (asked in one conversation,
  a model learns later answers from earlier ones: one "yes" and one "no" about each image);
- `stage_data/existence_1obj.json`: one "yes" and one "no" question about every one-object image;
- `text/existence_text.json`: eight one-turn POPE questions about each caption with shapes, the caption
  standing where the image was (text for `mllm pretrain-lm --conversations`), half "yes".

    python benchmarks/existence_device/prepare.py runs/existence_device/world
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from mllm.eval.prompts import build_prompt
from mllm.world.scene import SHAPES


def pope(shape: str) -> str:
    return build_prompt("pope", {"question": f"Is there a {shape} in the image?"})


def turn(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def single_turn(records: list[dict]) -> list[dict]:
    out = []
    for r in (r for r in records if "image" in r):
        t = r["conversations"]
        out += [{"id": f"{r['id']}-{k}", "image": r["image"],
                 "conversations": turn("<image>\n" + t[2 * k]["value"].replace("<image>\n", ""), t[2 * k + 1]["value"])}
                for k in range(len(t) // 2)]
    random.Random(0).shuffle(out)
    return out


def one_object(align: list[dict]) -> list[dict]:
    rng, out = random.Random(0), []
    for r in align:
        caption = r["conversations"][1]["value"]
        if not caption.startswith("One object."):
            continue
        present = [s for s in SHAPES if f" {s}." in caption]
        absent = [s for s in SHAPES if s not in present]
        for shape, answer in ((present[0], "yes"), (rng.choice(absent), "no")):
            out.append({"id": f"{r['id']}-{answer}", "image": r["image"],
                        "conversations": turn("<image>\n" + pope(shape), answer)})
    rng.shuffle(out)
    return out


def text_questions(align: list[dict], per_caption: int = 8) -> list[dict]:
    rng, out = random.Random(0), []
    for r in align:
        caption = r["conversations"][1]["value"]
        present = [s for s in SHAPES if f" {s}." in caption]
        if not present:
            continue
        absent = [s for s in SHAPES if s not in present]
        for k in range(per_caption):
            shape, answer = (rng.choice(present), "yes") if k % 2 == 0 else (rng.choice(absent), "no")
            out.append({"id": f"{r['id']}-{k}", "conversations": turn(caption + "\n" + pope(shape), answer)})
    rng.shuffle(out)
    return out


def main() -> None:
    world = Path(sys.argv[1])
    align = json.loads((world / "stage_data" / "align.json").read_text())
    existence = json.loads((world / "stage_data" / "existence.json").read_text())
    files = {world / "stage_data" / "existence_single.json": single_turn(existence),
             world / "stage_data" / "existence_1obj.json": one_object(align),
             world / "text" / "existence_text.json": text_questions(align)}
    for path, records in files.items():
        path.write_text(json.dumps(records))
        print(f"{len(records)} records -> {path}")


if __name__ == "__main__":
    main()
