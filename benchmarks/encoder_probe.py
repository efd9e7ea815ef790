"""What a frozen encoder knows about the synthetic world: linear probes on its patch features.

For each training scene with objects, the probe reads the flattened features of the tower (as the VLM sees
them) and predicts, per shape and per colour, whether the scene contains it. Reported: per-label accuracy
(with the all-absent baseline) and the share of scenes whose whole label set is right. The same probe runs
on a randomly initialised encoder of the same architecture, the demo's control. Writes JSON with the date.

    python benchmarks/encoder_probe.py --encoder runs/demo/pretrain/encoder --world runs/demo/world \
        --out benchmarks/results/encoder_probe_demo.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from report import report, stamp

from mllm.data.images import to_tensor
from mllm.encoders.tower import EncoderConfig, build_tower
from mllm.world.scene import COLOURS, SHAPES


def scenes(world: Path, limit: int) -> tuple[list[Path], torch.Tensor, torch.Tensor]:
    """Images and shape / colour presence labels, read off the alignment captions."""
    records = json.loads((world / "stage_data" / "align.json").read_text())
    records = [r for r in records if "object" in r["conversations"][1]["value"]][:limit]
    captions = [r["conversations"][1]["value"] for r in records]
    shapes = torch.tensor([[float(f" {s}." in c) for s in SHAPES] for c in captions])
    colours = torch.tensor([[float(f" {c} " in text) for c in COLOURS] for text in captions])
    return [world / "images" / r["image"] for r in records], shapes, colours


@torch.no_grad()
def features(encoder: Path, random_init: bool, images: list[Path], layer: int) -> torch.Tensor:
    tower = build_tower(EncoderConfig(path=str(encoder), random_init=random_init, feature_layer=layer)).eval()
    out = []
    for start in range(0, len(images), 256):
        batch = [to_tensor(Image.open(p).convert("RGB"), tower.image) for p in images[start:start + 256]]
        out.append(tower(torch.stack(batch)).flatten(1))
    x = torch.cat(out)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def probe(x: torch.Tensor, y: torch.Tensor, train: int, steps: int = 300) -> dict[str, float]:
    """L2-regularised multi-label logistic regression; scores on the rows after `train`."""
    w = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x[:train] @ w + b, y[:train])
        opt.zero_grad()
        (loss + 1e-3 * w.pow(2).sum()).backward()
        opt.step()
    with torch.no_grad():
        right = ((x[train:] @ w + b) > 0) == y[train:].bool()
    return {"label_accuracy": round(right.float().mean().item(), 4),
            "all_absent_baseline": round(1 - y[train:].mean().item(), 4),
            "scenes_fully_right": round(right.all(1).float().mean().item(), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=3000)
    parser.add_argument("--layer", type=int, default=-2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    images, shapes, colours = scenes(args.world, args.scenes)
    train = int(0.8 * len(images))
    result = {**stamp(), "encoder": str(args.encoder), "scenes": len(images), "held_out": len(images) - train,
              "feature_layer": args.layer}
    for name, random_init in (("pretrained", False), ("random_init", True)):
        x = features(args.encoder, random_init, images, args.layer)
        result[name] = {"shape": probe(x, shapes, train), "colour": probe(x, colours, train)}
    report(result, args.out)


if __name__ == "__main__":
    main()
