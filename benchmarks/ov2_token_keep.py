"""What OpenVision 2's token keeping buys: training FLOPs and step time at keep ratio 0.35 vs 1.0.

Both settings run in the same process, interleaved, so the ratio survives a noisy machine. FLOPs come
from torch's FLOP counter (forward + backward of one training step). Writes a JSON result with the date
and the machine.

    python benchmarks/ov2_token_keep.py --vit B/16 --decoder B --image-size 224 --batch 8 \
        --out benchmarks/results/ov2_token_keep_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from report import report, stamp
from torch.utils.flop_counter import FlopCounterMode

from mllm.encoders.objectives import OpenVision2Config, OpenVision2Objective


def batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    captions = torch.randint(3, 1000, (args.batch, args.caption_len))
    return {"pixel_values": torch.randn(args.batch, 3, args.image_size, args.image_size), "caption_ids": captions}


def step(objective: OpenVision2Objective, data: dict[str, torch.Tensor]) -> None:
    objective.zero_grad(set_to_none=True)
    objective(data)["loss"].backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vit", default="B/16")
    parser.add_argument("--decoder", default="B")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--caption-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ov2_token_keep_cpu.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    data = batch(args)
    models = {}
    for ratio in (0.35, 1.0):
        cfg = OpenVision2Config(vit=args.vit, image_size=args.image_size, decoder=args.decoder, keep_ratio=ratio)
        models[ratio] = OpenVision2Objective(cfg, vocab_size=32000, pad_id=0).train()
    flops = {}
    for ratio, model in models.items():
        with FlopCounterMode(display=False) as counter:
            step(model, data)
        flops[ratio] = counter.get_total_flops() / args.batch
    times: dict[float, list[float]] = {ratio: [] for ratio in models}
    for _ in range(args.repeats + 1):  # the first round warms up
        for ratio, model in models.items():
            start = time.perf_counter()
            step(model, data)
            times[ratio].append(time.perf_counter() - start)
    median = {ratio: statistics.median(t[1:]) for ratio, t in times.items()}
    result = {
        **stamp(),
        "config": vars(args) | {"out": str(args.out)},
        "gflops_per_image": {str(r): round(f / 1e9, 3) for r, f in flops.items()},
        "seconds_per_step": {str(r): round(t, 4) for r, t in median.items()},
        "flops_ratio_keep035_over_full": round(flops[0.35] / flops[1.0], 3),
        "time_ratio_keep035_over_full": round(median[0.35] / median[1.0], 3),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
