"""A control for a gently pretrained tower: its initialisation plus its own update, shuffled.

With `optim.encoder_lr_scale` 0.01 the demo's OV2 tower moves 0.6% from its initialisation, which is the
random-encoder control's tower. A VLM on it scoring above the control could come from what the update
learnt, or from any small change sending the VLM's training down another path. This writes the tower
W0 + shuffle(W - W0): every tensor's update with its entries permuted (the same size and values, no learnt
direction), W0 rebuilt exactly as the control builds it (`encoder.seed`). Train the same VLM on it and
compare with the control and the trained tower.

    python benchmarks/shuffled_update.py --encoder runs/enc/encoder --out runs/enc_shuffled [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mllm.encoders.tower import EncoderConfig, OpenVisionTower, read_encoder_config, save_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", type=Path, required=True, help="an exported encoder folder of ours")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="the permutations' seed")
    parser.add_argument("--init_seed", type=int, default=0, help="encoder.seed of the control (W0)")
    args = parser.parse_args()
    start = OpenVisionTower.from_config(EncoderConfig(path=str(args.encoder), random_init=True, seed=args.init_seed))
    trained = OpenVisionTower.from_config(EncoderConfig(path=str(args.encoder)))
    generator = torch.Generator().manual_seed(args.seed)
    moved = total = 0.0
    with torch.no_grad():
        weights = dict(trained.vit.named_parameters())
        for name, w0 in start.vit.named_parameters():
            update = (weights[name] - w0).flatten()
            w0 += update[torch.randperm(update.numel(), generator=generator)].view_as(w0)
            moved += float(update.pow(2).sum())
            total += float(weights[name].pow(2).sum())
    save_encoder(start.vit, read_encoder_config(args.encoder)[1], args.out)
    print(f"{args.out}: the update of {args.encoder} ({(moved / total) ** 0.5:.4f} of its norm), shuffled")


if __name__ == "__main__":
    main()
