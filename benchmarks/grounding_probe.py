"""Does a trained VLM read its image? Caption-token accuracy with the right image and with another scene's.

For the world's dense captions ("Top left: a small red star. ..."), each colour, shape, size and written
word is predicted teacher-forced, once with the image the caption describes and once with the images of the
batch rolled by one, so every caption meets another scene. Equal accuracy in both columns means the model
answers from its language prior alone; the gap is what it reads off the image. The caption prompt is the
one the model was trained with: `plain` for an align-stage model, `chat` (the detailed-description turn of
the instruction mix) for an instruct-stage one.

    python benchmarks/grounding_probe.py --world runs/demo/world --format chat \
        --model runs/demo/ov2/instruct/model runs/demo/random_encoder/instruct/model \
        --out benchmarks/results/grounding_probe_demo.json
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from report import report, stamp

from mllm.data.llava_json import ConversationDataset, collate, load_records
from mllm.vlm import VisionLanguageModel
from mllm.world.build import DESCRIBE
from mllm.world.scene import COLOURS, SHAPES, SIZES, WORDS

CATEGORIES = {"colour": set(COLOURS), "shape": set(SHAPES), "size": set(SIZES), "word": set(WORDS)}


def caption_records(world: Path, fmt: str, limit: int) -> list[dict[str, Any]]:
    """The first alignment captions, asked with the instruct mix's description prompt in chat format."""
    records = load_records(world / "stage_data" / "align.json")[:limit]
    if fmt == "chat":
        for record in records:
            record["conversations"][0]["value"] = f"<image>\n{DESCRIBE}"
    return records


@torch.no_grad()
def accuracy(model: VisionLanguageModel, tokenizer: Any, data: ConversationDataset, batch: int,
             shuffle: bool) -> dict[str, float]:
    right: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    names = {i: tokenizer.decode([i]).strip() for i in range(len(tokenizer))}
    for start in range(0, len(data), batch):
        inputs = collate([data[i] for i in range(start, min(start + batch, len(data)))], tokenizer.pad_token_id)
        if shuffle:
            inputs["pixel_values"] = inputs["pixel_values"].roll(1, 0)
        labels = inputs.pop("labels")[:, 1:]
        predicted = model(**inputs).logits[:, :-1].argmax(-1)
        for target, guess in zip(labels[labels >= 0].tolist(), predicted[labels >= 0].tolist(), strict=True):
            for category, words in CATEGORIES.items():
                if names[target] in words:
                    total[category] += 1
                    right[category] += target == guess
    return {c: round(right[c] / total[c], 3) for c in CATEGORIES if total[c]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, nargs="+", required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--format", choices=("plain", "chat"), default="chat")
    parser.add_argument("--captions", type=int, default=800)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {**stamp(), "world": str(args.world), "format": args.format,
                              "note": "training images; teacher-forced accuracy of caption tokens by category"}
    with tempfile.TemporaryDirectory() as tmp:
        captions = Path(tmp) / "captions.json"
        captions.write_text(json.dumps(caption_records(args.world, args.format, args.captions)))
        for path in args.model:
            model, tokenizer = VisionLanguageModel.from_pretrained(path)
            model.eval()
            data = ConversationDataset(captions, args.world / "images", tokenizer, model.tower.image, args.format,
                                       model.num_image_tokens, 512)
            result[str(path)] = {"captions": len(data)}
            for name, shuffle in (("right_image", False), ("other_image", True)):
                result[str(path)][name] = accuracy(model, tokenizer, data, args.batch, shuffle)
    report(result, args.out)


if __name__ == "__main__":
    main()
