"""Can a warmed-up LM answer the world's questions when the caption stands in for the image?

A VLM can only ground an answer it could give from a description: if the LM cannot read "red 3" off a
caption to answer "What is the value of the red bar?", no connector will teach it to read the same fact
off image features within a short instruction stage. For each reading conversation (caption + first
question) this scores the LM's first answer token, teacher-forced, by answer kind, next to the share a
constant answer would get; for yes/no questions it also asks which of the two the LM prefers ("yes" against
"no" in the question's own casing), with the share of "yes" among its picks: a balanced set read by an LM
that does not read gives about 50% with a yes share near 0 or 1. It also reports how far the prediction
moves (total variation, 0 to 1) when only the caption is swapped for another scene's: near 0 means the LM
answers without reading.

    python benchmarks/lm_reading_probe.py --lm runs/demo/lm/model --reading runs/demo/world/text/reading.json \
        --out benchmarks/results/lm_reading_probe_demo.json
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from report import report, stamp
from transformers import AutoModelForCausalLM, AutoTokenizer

from mllm.data.conversation import encode_conversation


def answer_kind(answer: str) -> str:
    if answer.lower() in ("yes", "no"):
        return "yes_no"
    return "letter" if len(answer) == 1 and answer.isalpha() else "open"


FLIP = {"yes": "no", "no": "yes", "Yes": "No", "No": "Yes"}


def prefers_gold(model: torch.nn.Module, tokenizer: object, turns: list[dict[str, str]]) -> bool:
    """Whether the LM ranks the gold yes/no above its opposite at the answer's first token."""
    ids, labels = encode_conversation(tokenizer, turns, "chat", 0, 1024)
    flipped, _ = encode_conversation(tokenizer, [turns[0], {**turns[1], "value": FLIP[turns[1]["value"]]}],
                                     "chat", 0, 1024)
    first = next(i for i, label in enumerate(labels) if label != -100)
    logits = model(torch.tensor([ids])).logits[0, first - 1]
    return bool(logits[ids[first]] > logits[flipped[first]])


def first_answer(model: torch.nn.Module, tokenizer: object, turns: list[dict[str, str]]) -> tuple[torch.Tensor, int]:
    """The LM's distribution over the first answer token, and that token."""
    ids, labels = encode_conversation(tokenizer, turns, "chat", 0, 1024)
    first = next(i for i, label in enumerate(labels) if label != -100)
    return model(torch.tensor([ids])).logits[0, first - 1].softmax(-1), ids[first]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lm", type=Path, required=True)
    parser.add_argument("--reading", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.lm)
    model = AutoModelForCausalLM.from_pretrained(args.lm).eval()
    records = json.loads(args.reading.read_text())[-args.limit:]
    right, seen, answers = collections.Counter(), collections.Counter(), collections.defaultdict(list)
    moves = []
    yes_no = collections.Counter()
    for record, other in zip(records, records[1:] + records[:1], strict=True):
        turns = record["conversations"][:2]
        kind = answer_kind(turns[1]["value"])
        probs, target = first_answer(model, tokenizer, turns)
        seen[kind] += 1
        right[kind] += int(probs.argmax().item() == target)
        answers[kind].append(target)
        if turns[1]["value"] in FLIP:
            gold_wins = prefers_gold(model, tokenizer, turns)
            yes_no["right"] += gold_wins
            yes_no["picked_yes"] += gold_wins == (turns[1]["value"].lower() == "yes")
            yes_no["seen"] += 1
        caption, question = turns[0]["value"].split("\n", 1)
        other_caption = other["conversations"][0]["value"].split("\n", 1)[0]
        if other_caption != caption:
            swapped = [{**turns[0], "value": other_caption + "\n" + question}, turns[1]]
            moves.append(0.5 * (first_answer(model, tokenizer, swapped)[0] - probs).abs().sum().item())
    result = {
        **stamp(), "lm": str(args.lm),
        "conversations": len(records), "caption_swap_shift": round(sum(moves) / len(moves), 4),
        "first_token_accuracy": {k: round(right[k] / seen[k], 4) for k in sorted(seen)},
        "yes_no_two_way": {"accuracy": round(yes_no["right"] / max(yes_no["seen"], 1), 4),
                           "share_yes": round(yes_no["picked_yes"] / max(yes_no["seen"], 1), 4),
                           "questions": yes_no["seen"]},
        "constant_answer_accuracy": {k: round(collections.Counter(v).most_common(1)[0][1] / len(v), 4)
                                     for k, v in sorted(answers.items())},
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
