"""Where does a VLM's yes/no answer come from: the image, or the conversation around it?

Teacher-forced on training conversations, this reads the model's pick between "yes" and "no" (in the
reply's own casing) at every yes/no reply, and reports accuracy and "yes" share by turn index, once with each
sample's own image and once with the batch's images rotated by one (every sample sees another scene). Equal
columns mean the image plays no part; a turn that is right with either image is answered from the text,
as the second question of a yes/no pair can be from the first.

    python benchmarks/answer_source_probe.py --model runs/existence/existence/model \
        --data runs/demo/world/stage_data/existence.json --images runs/demo/world/images \
        --out benchmarks/results/answer_source_existence_stage.json

`--pope runs/demo/world/benchmarks/pope.parquet` asks the benchmark's own rows instead (one-turn, its prompt).
`--any_answer` scores every reply instead, by whether the model's most likely first token is the reply's
(open answers such as a sign's word: `reading_probe.py --stage_data` writes such a set).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import pandas as pd
import torch
from report import report, stamp

from mllm.data.conversation import IGNORE_INDEX
from mllm.data.llava_json import ConversationDataset, collate
from mllm.eval.benchmarks import row_image
from mllm.eval.prompts import build_prompt
from mllm.vlm import VisionLanguageModel


def pope_records(parquet: Path, folder: Path) -> Path:
    """The POPE benchmark's rows as one-turn LLaVA records (images written into `folder`); the JSON's path."""
    records = []
    for row in pd.read_parquet(parquet).to_dict("records"):
        image = f"{row['question_id']}.png"
        row_image(row).save(folder / image)
        records.append({"id": row["question_id"], "image": image, "conversations": [
            {"from": "human", "value": "<image>\n" + build_prompt("pope", {"question": row["question"]})},
            {"from": "gpt", "value": row["answer"]}]})
    path = folder / "pope.json"
    path.write_text(json.dumps(records))
    return path


def yes_no_picks(logits: torch.Tensor, labels: torch.Tensor,
                 pairs: list[tuple[int, int]]) -> list[tuple[int, bool, bool]]:
    """(turn index, right, picked yes) for every reply whose first token is a yes/no token of `pairs`."""
    out, turn = [], 0
    for t in range(1, labels.shape[0]):
        if labels[t] == IGNORE_INDEX or labels[t - 1] != IGNORE_INDEX:
            continue
        pair = next((p for p in pairs if int(labels[t]) in p), None)
        if pair is not None:
            yes, no = pair
            picked_yes = bool(logits[t - 1, yes] > logits[t - 1, no])
            out.append((turn, picked_yes == (int(labels[t]) == yes), picked_yes))
        turn += 1
    return out


def first_token_picks(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, bool, bool]]:
    """(turn index, right, False) for every reply: is the most likely first token the reply's?"""
    starts = [t for t in range(1, labels.shape[0]) if labels[t] != IGNORE_INDEX and labels[t - 1] == IGNORE_INDEX]
    return [(turn, bool(logits[t - 1].argmax() == labels[t]), False) for turn, t in enumerate(starts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--pope", type=Path, help="a POPE benchmark parquet, instead of --data and --images")
    parser.add_argument("--any_answer", action="store_true", help="score every reply's first token, not yes/no")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if (args.pope is None) == (args.data is None or args.images is None):
        parser.error("give either --data and --images, or --pope")
    model, tokenizer = VisionLanguageModel.from_pretrained(args.model)
    model.eval()
    scratch = tempfile.TemporaryDirectory()
    if args.pope is not None:
        args.data = pope_records(args.pope, Path(scratch.name))
        args.images = Path(scratch.name)
    dataset = ConversationDataset(args.data, args.images, tokenizer, model.tower.image, "chat",
                                  model.num_image_tokens, 2048)
    first = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no", "Yes", "No")]
    pairs = [(first[0], first[1]), (first[2], first[3])]
    chosen = [i for i in range(len(dataset)) if dataset.samples[i].image is not None][: args.samples]
    tallies = {mode: collections.defaultdict(collections.Counter) for mode in ("own_image", "another_image")}
    with torch.no_grad():
        for start in range(0, len(chosen), args.batch):
            batch = collate([dataset[i] for i in chosen[start : start + args.batch]], tokenizer.pad_token_id)
            for mode, tally in tallies.items():
                pixels = batch["pixel_values"] if mode == "own_image" else batch["pixel_values"].roll(1, 0)
                logits = model(batch["input_ids"], batch["attention_mask"], pixels).logits
                for row in range(len(logits)):
                    picks = (first_token_picks(logits[row], batch["labels"][row]) if args.any_answer
                             else yes_no_picks(logits[row], batch["labels"][row], pairs))
                    for turn, right, picked_yes in picks:
                        tally[turn].update(n=1, right=int(right), yes=int(picked_yes))
    by_turn = {mode: {str(turn): {"replies": c["n"], "accuracy": round(c["right"] / c["n"], 4),
                                  **({} if args.any_answer else {"share_yes": round(c["yes"] / c["n"], 4)})}
                      for turn, c in sorted(tally.items())}
               for mode, tally in tallies.items()}
    scratch.cleanup()
    report({**stamp(), "model": str(args.model), "data": str(args.pope or args.data), "conversations": len(chosen),
            "by_turn": by_turn}, args.out)


if __name__ == "__main__":
    main()
