"""Can an encoder's features name the word on a sign, on training scenes and on the benchmarks' scenes?

TextVQA and OCRBench ask what a sign says. Each sign's word is written across one row of the world's 3x3
grid, so a VLM sees it in three patch features of a /32 tower. Linear probes (multinomial logistic
regression on standardised features) name the word, one of the world's twelve, from the row's three cells
concatenated ("row"), from the mean of the three (what one attention head averaging them would see) and
from each cell alone. They train on 80% of the word signs among the training images (the align captions
give each sign's word and row, and the other two rows of the scene train a thirteenth class, "no word")
and are scored on the other 20% and on the OCRBench rows whose answer is a word, whose images hold a
word-colour pair never seen in training; there the row is the one the probe finds least likely to hold no
word. The same probes run on a randomly initialised encoder of the same architecture (the demo's control).

`--stage_data` also writes `stage_data/reading_single.json` into the world: every reading question of the
instruction mix as a one-turn record, the data of `reading_stage.yaml`, which measures how many steps a VLM
needs to read from those features (`answer_source_probe.py --any_answer` checks it on training questions).

    python benchmarks/reading_probe.py --encoder runs/demo/pretrain/encoder --world runs/demo/world \
        --stage_data --out benchmarks/results/reading_probe_demo.json
"""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import pandas as pd
import torch
from encoder_probe import fit_linear, grid_cells
from PIL import Image
from report import report, stamp

from mllm.data.images import to_tensor
from mllm.encoders.tower import EncoderConfig, build_tower
from mllm.world.scene import ROWS, WORDS

SIGN = re.compile(r"(Top|Middle|Bottom): the word (\w+) in \w+\.")
READING = re.compile(r"what is written in the image|what word is written|what does the sign say|"
                     r"what number is written", re.IGNORECASE)
NO_WORD = len(WORDS)
VIEWS = ("row", "mean", "left", "middle", "right")


def training_signs(world: Path) -> list[tuple[Path, int, int]]:
    """(image, row, word index) of every word sign in the align captions (numbers left out)."""
    out = []
    for record in json.loads((world / "stage_data" / "align.json").read_text()):
        if match := SIGN.search(record["conversations"][1]["value"]):
            out.append((world / "images" / record["image"], ROWS.index(match.group(1).lower()),
                        WORDS.index(match.group(2))))
    return out


def benchmark_signs(world: Path) -> list[tuple[Image.Image, int]]:
    """(image, word index) of the OCRBench rows whose answer is one of the world's words."""
    table = pd.read_parquet(world / "benchmarks" / "ocrbench.parquet")
    return [(Image.open(io.BytesIO(image["bytes"])).convert("RGB"), WORDS.index(list(answer)[0]))
            for image, answer in zip(table["image"], table["answer"], strict=True) if list(answer)[0] in WORDS]


@torch.no_grad()
def grid_features(tower: torch.nn.Module, images: list[Image.Image]) -> torch.Tensor:
    """(images, 3 rows, 3 columns, width): each cell's patches (one for a /32 tower at 96 px)."""
    x = torch.cat([tower(torch.stack([to_tensor(im, tower.image) for im in images[s:s + 256]]))
                   for s in range(0, len(images), 256)])
    return grid_cells(x).view(len(images), 3, 3, -1)


def view(rows: torch.Tensor, name: str) -> torch.Tensor:
    """(N, 3 cells, width) -> the probe's input for one view of the row."""
    if name == "row":
        return rows.flatten(1)
    if name == "mean":
        return rows.mean(1)
    return rows[:, ("left", "middle", "right").index(name)]


def probe(train: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor, bench: torch.Tensor,
          bench_labels: torch.Tensor, name: str) -> dict[str, float]:
    """Accuracy on held-out training signs and on the benchmark's words for one view."""
    n = len(labels)
    x = torch.stack([view(train[:, r], name) for r in range(3)], 1)  # (signs, 3 rows, d)
    y = torch.full((n, 3), NO_WORD)
    y[torch.arange(n), rows] = labels
    split = int(0.8 * n)
    flat = x[:split].flatten(0, 1)
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    w, b = fit_linear((flat - mean) / std, y[:split].flatten(), NO_WORD + 1, steps=400)
    held = ((x[split:, :] - mean) / std) @ w + b  # (signs, 3 rows, classes)
    held_right = held[torch.arange(n - split), rows[split:]].argmax(-1) == labels[split:]
    logits = ((torch.stack([view(bench[:, r], name) for r in range(3)], 1) - mean) / std) @ w + b
    row = logits.softmax(-1)[..., NO_WORD].argmin(1)
    picked = logits[torch.arange(len(bench)), row, :NO_WORD].argmax(-1)
    return {"held_out_training_signs": round(held_right.float().mean().item(), 4),
            "benchmark_words": round((picked == bench_labels).float().mean().item(), 4)}


def write_stage_data(world: Path, pattern: re.Pattern[str] = READING, name: str = "reading_single.json") -> int:
    """One-turn records of the instruction mix's questions that `pattern` finds (by default its reading
    questions), as `stage_data/<name>`; how many."""
    out = []
    for record in json.loads((world / "stage_data" / "instruct.json").read_text()):
        turns = record["conversations"]
        for k in range(0, len(turns), 2):
            question = turns[k]["value"].replace("<image>\n", "")
            if pattern.search(question):
                out.append({"id": f"{record['id']}-{k // 2}", "image": record["image"], "conversations": [
                    {"from": "human", "value": "<image>\n" + question}, turns[k + 1]]})
    (world / "stage_data" / name).write_text(json.dumps(out, indent=1))
    return len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--layer", type=int, default=-2)
    parser.add_argument("--stage_data", action="store_true", help="also write stage_data/reading_single.json")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    signs = training_signs(args.world)
    bench = benchmark_signs(args.world)
    rows = torch.tensor([r for _, r, _ in signs])
    labels = torch.tensor([w for *_, w in signs])
    bench_labels = torch.tensor([w for _, w in bench])
    train_images = [Image.open(p).convert("RGB") for p, *_ in signs]
    result = {**stamp(), "encoder": str(args.encoder), "feature_layer": args.layer, "training_signs": len(signs),
              "held_out_training_signs": len(signs) - int(0.8 * len(signs)), "benchmark_words": len(bench),
              "chance": round(1 / len(WORDS), 4)}
    for name, random_init in (("pretrained", False), ("random_init", True)):
        tower = build_tower(EncoderConfig(path=str(args.encoder), random_init=random_init,
                                          feature_layer=args.layer)).eval()
        train, test = grid_features(tower, train_images), grid_features(tower, [im for im, _ in bench])
        result[name] = {v: probe(train, rows, labels, test, bench_labels, v) for v in VIEWS}
    if args.stage_data:
        result["reading_single_records"] = write_stage_data(args.world)
    report(result, args.out)


if __name__ == "__main__":
    main()
