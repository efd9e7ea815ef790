"""What a frozen encoder knows about each object: linear probes on the patch features of its grid cell.

Every object of a training scene sits in one cell of the world's 3x3 grid; the probe reads the tower's
features of that cell's patches (as the VLM sees them: one patch for a /32 tower at 96 px, four for /16)
and classifies the object's shape (10 classes), colour (8) and size (2) with multinomial logistic
regression, trained on 80% of the objects and scored on the rest. The same probe runs on a randomly
initialised encoder of the same architecture, the demo's control. Linear readability is not the whole
story (a random projection of pixels keeps much of it): `grounding_probe.py` measures what a VLM reads.

    python benchmarks/encoder_probe.py --encoder runs/demo/pretrain/encoder --world runs/demo/world \
        --out benchmarks/results/encoder_probe_demo.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from PIL import Image
from report import report, stamp

from mllm.data.images import to_tensor
from mllm.encoders.tower import EncoderConfig, build_tower
from mllm.world.scene import COLOURS, POSITIONS, SHAPES, SIZES

OBJECT = re.compile("(" + "|".join(sorted((p.capitalize() for p in POSITIONS), key=len, reverse=True))
                    + r"): a (small|large) (\w+) (\w+)\.")


def objects(world: Path, limit: int) -> tuple[list[Path], list[int], dict[str, torch.Tensor]]:
    """Image, cell and (shape, colour, size) labels of each object, read off the alignment captions."""
    images, cells, labels = [], [], {"shape": [], "colour": [], "size": []}
    for record in json.loads((world / "stage_data" / "align.json").read_text()):
        for match in OBJECT.finditer(record["conversations"][1]["value"]):
            images.append(world / "images" / record["image"])
            cells.append(POSITIONS.index(match.group(1).lower()))
            labels["size"].append(SIZES.index(match.group(2)))
            labels["colour"].append(list(COLOURS).index(match.group(3)))
            labels["shape"].append(SHAPES.index(match.group(4)))
        if len(cells) >= limit:
            break
    return images, cells, {k: torch.tensor(v) for k, v in labels.items()}


def grid_cells(patches: torch.Tensor) -> torch.Tensor:
    """(B, 9k², C) patch features in row-major order -> (B, 9, k²C): each grid cell's k x k patches, flattened
    row by row (one patch per cell for a /32 tower at 96 px, four for /16)."""
    grid = round(patches.shape[1] ** 0.5)
    if grid * grid != patches.shape[1] or grid % 3:
        raise ValueError(f"{patches.shape[1]} patches per image do not split into the world's 3x3 cells")
    k = grid // 3
    cells = patches.view(len(patches), 3, k, 3, k, -1).permute(0, 1, 3, 2, 4, 5)
    return cells.reshape(len(patches), 9, -1)


@torch.no_grad()
def cell_features(encoder: Path, random_init: bool, images: list[Path], cells: list[int], layer: int) -> torch.Tensor:
    tower = build_tower(EncoderConfig(path=str(encoder), random_init=random_init, feature_layer=layer)).eval()
    unique = sorted(set(images))
    index = {path: i for i, path in enumerate(unique)}
    batches = [torch.stack([to_tensor(Image.open(p).convert("RGB"), tower.image) for p in unique[s:s + 256]])
               for s in range(0, len(unique), 256)]
    x = grid_cells(torch.cat([tower(batch) for batch in batches]))
    features = torch.stack([x[index[p], c] for p, c in zip(images, cells, strict=True)])
    return (features - features.mean(0)) / (features.std(0) + 1e-6)


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-regularised multinomial logistic regression of `y` on `x` (Adam, full batch)."""
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300) -> float:
    """`fit_linear` on the first 80% of the rows; accuracy on the last 20%."""
    train = int(0.8 * len(y))
    w, b = fit_linear(x[:train], y[:train], classes, steps)
    return round(((x[train:] @ w + b).argmax(1) == y[train:]).float().mean().item(), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--objects", type=int, default=4000)
    parser.add_argument("--layer", type=int, default=-2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    images, cells, labels = objects(args.world, args.objects)
    result = {**stamp(), "encoder": str(args.encoder), "objects": len(cells),
              "held_out": len(cells) - int(0.8 * len(cells)), "feature_layer": args.layer}
    classes = {"shape": len(SHAPES), "colour": len(COLOURS), "size": len(SIZES)}
    for name, random_init in (("pretrained", False), ("random_init", True)):
        x = cell_features(args.encoder, random_init, images, cells, args.layer)
        result[name] = {attr: probe(x, labels[attr], n) for attr, n in classes.items()}
    report(result, args.out)


if __name__ == "__main__":
    main()
