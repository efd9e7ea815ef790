"""Can a connector map a frozen encoder's cell features to a word-like target at all?

A VLM's connector should hand the LM something it can read; `soft_context_probe.py` shows that a nine-cell
grid of word embeddings (the object's shape word per cell, zero for empty cells) is such a thing. This fits a
fresh connector of each kind straight to that grid: the inputs are the VLM's tower features of the world's
training scenes with shapes (one token per cell for the demo's 96 px /32 encoder), the targets are the LM
input embeddings of each cell's shape word (the sum of the token embeddings of " " + word; with
`--target colour_shape`, plus those of its colour word), read off the alignment captions. The fit is MSE
(summed over the width, averaged over cells) with Adam on 90% of the images. It reports final train and
validation MSE, the validation MSE of predicting zeros, and how often the prediction for a validation object
cell is closest (by cosine) to the embedding of its own shape among the world's shapes.

    python benchmarks/connector_fit_probe.py --model runs/demo/align/model --world runs/demo/world \
        --out benchmarks/results/connector_fit_probe_demo.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from report import report, stamp
from sketch_lm import CELL, caption_cells, sketch, words_vector

from mllm.connectors import build_connector
from mllm.vlm import VisionLanguageModel
from mllm.world.scene import POSITIONS, SHAPES


def mse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return round(((prediction - target) ** 2).sum(-1).mean().item(), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--connectors", nargs="+", default=["mlp2x_gelu", "ln_mlp2x_gelu"])
    parser.add_argument("--target", choices=["shape", "colour_shape"], default="shape")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = VisionLanguageModel.from_pretrained(args.model)
    embed = model.llm.get_input_embeddings()

    records = [r for r in json.loads((args.world / "stage_data" / "align.json").read_text())
               if CELL.search(r["conversations"][1]["value"])]
    features, targets, shapes = [], [], []
    with torch.no_grad():
        for start in range(0, len(records), 64):
            chunk = records[start:start + 64]
            pixels, _, _ = model.preprocess_images([Image.open(args.world / "images" / r["image"]) for r in chunk])
            features.append(model.tower(pixels))
            for record in chunk:
                objects = caption_cells(record["conversations"][1]["value"])
                targets.append(sketch(embed, tokenizer, {cell: (colour, shape) if args.target == "colour_shape"
                                                         else (shape,) for cell, colour, shape in objects}))
                names = [""] * len(POSITIONS)
                for cell, _, shape in objects:
                    names[cell] = shape
                shapes.append(names)
    x, y = torch.cat(features), torch.stack(targets)
    if x.shape[1] != len(POSITIONS):
        raise ValueError(f"the tower gives {x.shape[1]} tokens per image, not one per grid cell")
    train = int(0.9 * len(x))
    with torch.no_grad():
        shape_table = torch.nn.functional.normalize(torch.stack([words_vector(embed, tokenizer, [s]) for s in SHAPES]),
                                                    dim=1)
    objects = [(i, k) for i in range(train, len(x)) for k in range(len(POSITIONS)) if shapes[i][k]]
    results = {}
    for name in args.connectors:
        connector = build_connector(name, x.shape[-1], embed.embedding_dim)
        optimizer = torch.optim.Adam(connector.parameters(), lr=args.lr)
        for _ in range(args.steps):
            batch = torch.randint(0, train, (args.batch,))
            loss = ((connector(x[batch]) - y[batch]) ** 2).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            fitted, predicted = connector(x[:train]), connector(x[train:])
        nearest = (torch.nn.functional.normalize(predicted, dim=-1) @ shape_table.T).argmax(-1)
        right = sum(SHAPES[nearest[i - train, k]] == shapes[i][k] for i, k in objects)
        results[name] = {"train_mse": mse(fitted, y[:train]), "val_mse": mse(predicted, y[train:]),
                         "val_mse_zeros": mse(torch.zeros_like(y[train:]), y[train:]),
                         "val_nearest_shape": round(right / len(objects), 3)}
    report({**stamp(), "model": str(args.model), "world": str(args.world), "target": args.target,
            "images": len(x), "val_images": len(x) - train, "val_objects": len(objects), "steps": args.steps,
            "batch": args.batch, "lr": args.lr, "connectors": results}, args.out)


if __name__ == "__main__":
    main()
