"""Training cost of OpenVision 2 vs OpenVision vs open_clip's CoCa: step time, peak memory, FLOPs and MFU.

The three objectives train the same ViT at the same resolution and batch. OpenVision 2 (`ov2`) captions
from a random 35% of the visual tokens with no text encoder; OpenVision (`ov1`) adds a text encoder, the
dual contrastive loss and a query decoder that reads every visual token plus the web caption; CoCa is
open_clip's (`create_model('coca_ViT-B-32', ...)` resized: the same ViT, a unimodal text tower and a
cross-attention multimodal decoder each of the caption decoder's shape, `CoCaLoss` with open_clip's default
weights, contrastive 1 and caption 2). Captions are full-length random ids (128, as the OpenVision 2 release
pads them; OpenVision's text rows 80) on one fixed random batch, so data loading plays no part.

A step is forward, backward and an AdamW step (betas 0.9/0.95, weight decay 0.2 on weight matrices only, as
`mllm pretrain`; CoCa with open_clip's no-decay rule). After warm-up the models step in turn, A, B, C, A, B,
C..., so machine noise hits all alike; the report gives each one's median step time and images/s.

Peak memory covers weights, gradients, AdamW state and activations of one model, measured on its own
over one training step taken once AdamW's state exists (an optimizer step on zero gradients allocates it):
- CUDA: `torch.cuda.max_memory_allocated` over that step, minus what was allocated before the model was
  built, with the peak reset between models;
- CPU: the peak resident set size (`VmHWM`) of a fresh process that builds only that model and takes that
  step, minus its resident size before the build. It includes the allocator's overhead, which CUDA's count
  leaves out, so compare CPU and GPU memory only as ratios.

FLOPs per image (forward + backward, matrix products and attention at 2 FLOPs per multiply-add) come from
`mllm.encoders.flops` for ov2 and ov1, and from torch's FLOP counter over CoCa's first step, which counts the
same way. MFU (CUDA only) is FLOPs per image x images/s over the GPU's dense bf16 peak (`PEAK_BF16_TFLOPS`),
whatever `--precision` says. The paper's goal, 1.5x faster and 1.8x less memory than OpenVision, comes from
whole training runs of ViT-L/14 on TPU; the ratios here are of single steps of one configuration.

open_clip is optional (`pip install -e ".[open-clip]"`; it pulls torchvision); without it CoCa is skipped
with the reason printed and its ratios are null.

CPU default (ViT-S/16 at 224, S caption decoder and text tower, batch 8, 1 warm-up + 3 timed rounds): 1 min
40 s on the README's 2-core VM; `--vit B/16 --decoder B` took 9 minutes there while other jobs loaded it:

    python benchmarks/encoder_efficiency.py --json benchmarks/results/encoder_efficiency_cpu.json

GPU at the paper's scale (ViT-L/14 at 224, L decoder and text tower, bf16 autocast):

    python benchmarks/encoder_efficiency.py --device cuda --vit L/14 --resolution 224 --decoder L \
        --batch 128 --warmup 3 --steps 10 --precision bf16 --json benchmarks/results/encoder_efficiency_h200.json

There is no activation checkpointing here, and all three models stay resident (about 25 GB of weights,
gradients and AdamW state at L/14) while each one steps. By a count of the tensors autograd saves (meta
device, fp32), an image adds 0.8 GB of activations to OpenVision 2 and 1.3 GB to OpenVision at L/14, roughly
half that under bf16 autocast: batch 128 is meant for a 141 GB H200, 64 for an 80 GB H100 or A100, and a
per-GPU batch of 256 fits on neither (estimates, not yet measured on a GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
from report import report, stamp
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mllm.encoders.caption_decoder import DECODER_VARIANTS
from mllm.encoders.flops import FlopsConfig, build_objective, count_flops, fake_batch
from mllm.encoders.vit import ViTConfig

# AdamW as `mllm pretrain` sets it (mllm.train_stages.pretrain_config.OptimConfig; a test keeps the two
# equal). Not imported: that module pulls the data and distributed stack into every memory-probe process.
ADAMW_BETAS = (0.9, 0.95)
ADAMW_EPS = 1e-8
WEIGHT_DECAY = 0.2
LR = 1e-4  # any small value: the timing does not depend on it

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, in TFLOPs; the first name that is a
# substring of torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
)

PAPER_GOAL = {
    "ov2_vs_ov1_speedup": 1.5,
    "ov2_vs_ov1_memory_ratio": 1.8,
    "source": "OpenVision 2 project page, ViT-L/14 at 224: 57 h vs 83 h of training on TPU v4-512; "
              "13.8 GB vs 24.5 GB per chip at batch 2k",
}

COCA_BASE = "coca_ViT-B-32"  # the open_clip config whose layout (attentional pooler, cls text token) is resized

MODELS = ("ov2", "ov1", "coca")


@dataclass
class Bench:
    """One model ready to step: its loss on the fixed batch and its optimizer."""

    name: str
    model: nn.Module
    loss: Callable[[], Tensor]
    optimizer: torch.optim.Optimizer
    gflops_per_image: float | None = None


def adamw(model: nn.Module, no_decay: set[str]) -> torch.optim.AdamW:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n not in no_decay], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in named if n in no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LR, betas=ADAMW_BETAS, eps=ADAMW_EPS)


def flops_config(name: str, args: argparse.Namespace) -> FlopsConfig:
    """The ov2 / ov1 configuration of the run; the text encoder takes the caption decoder's shape."""
    return FlopsConfig(objective=name, vit=args.vit, resolution=args.resolution, decoder=args.decoder,
                       text=args.decoder, keep_ratio=args.keep_ratio, caption_len=args.caption_len,
                       text_len=args.text_len, vocab_size=args.vocab_size, batch=args.batch)


def build_mllm(name: str, args: argparse.Namespace, device: torch.device) -> Bench:
    cfg = flops_config(name, args)
    objective = build_objective(cfg, device)
    batch = fake_batch(objective, cfg, device)
    return Bench(name, objective, lambda: objective(batch)["loss"], adamw(objective, objective.no_weight_decay_names()))


def coca_missing() -> str | None:
    """Why CoCa cannot run here, or None when it can."""
    if importlib.util.find_spec("open_clip") is None:
        return ("open_clip is not installed (optional: pip install -e '.[open-clip]', which also pulls "
                "torchvision); CoCa skipped, its ratios are null")
    return None


def build_coca(args: argparse.Namespace, device: torch.device) -> Bench:
    """open_clip's CoCa resized to the run's ViT, with text tower and multimodal decoder of the caption
    decoder's shape (open_clip's coca_ViT-L-14 pairs a 12-layer 768-wide text tower with a decoder of the
    same shape, as the L variant here)."""
    import open_clip  # optional dependency, checked by coca_missing()

    vit = ViTConfig.from_name(args.vit, args.resolution)
    width, depth, mlp_dim, heads = DECODER_VARIANTS[args.decoder]
    base = open_clip.get_model_config(COCA_BASE)
    if base is None:
        raise RuntimeError(f"open_clip has no {COCA_BASE} config")
    # open_clip's CoCa configs give the attentional pooler as many heads as the text towers (B-32: 8, L-14: 12).
    vision_cfg = {**base["vision_cfg"], "image_size": args.resolution, "patch_size": vit.patch_size,
                  "width": vit.width, "layers": vit.depth, "head_width": vit.width // vit.heads,
                  "mlp_ratio": vit.mlp_dim / vit.width, "attn_pooler_heads": heads}
    text_shape = {"context_length": args.caption_len, "vocab_size": args.vocab_size, "width": width,
                  "heads": heads, "layers": depth}
    text_cfg = {**base["text_cfg"], **text_shape}
    if mlp_dim != 4 * width:  # only newer open_clip text configs take mlp_ratio; the default is 4
        text_cfg["mlp_ratio"] = mlp_dim / width
    # The multimodal decoder's MLP is 4x wide whatever the config says (open_clip does not pass it on).
    multimodal_cfg = {**base["multimodal_cfg"], **text_shape, "attn_pooler_heads": heads}
    # create_model merges keyword arguments over the named config; the image embeddings the decoder
    # cross-attends come out of the attentional pooler at embed_dim, so that is the decoder width.
    model = open_clip.create_model(COCA_BASE, device=device, embed_dim=width, vision_cfg=vision_cfg,
                                   text_cfg=text_cfg, multimodal_cfg=multimodal_cfg)
    model.train()
    loss_fn = open_clip.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)
    images = torch.randn(args.batch, 3, args.resolution, args.resolution, device=device)
    text = torch.randint(1, args.vocab_size, (args.batch, args.caption_len), device=device)

    def loss() -> Tensor:
        out = model(images, text)
        losses = loss_fn(image_features=out["image_features"], text_features=out["text_features"],
                         logits=out["logits"], labels=out["labels"], logit_scale=out["logit_scale"],
                         output_dict=True)
        return losses["contrastive_loss"] + losses["caption_loss"]  # both already weighted

    # open_clip's training script exempts gains, biases and the temperature from weight decay.
    no_decay = {n for n, p in model.named_parameters()
                if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n}
    return Bench("coca", model, loss, adamw(model, no_decay))


def build(name: str, args: argparse.Namespace, device: torch.device) -> Bench:
    torch.manual_seed(args.seed)
    return build_coca(args, device) if name == "coca" else build_mllm(name, args, device)


def train_step(bench: Bench, device: torch.device, precision: str) -> None:
    bench.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = bench.loss()
    loss.backward()
    bench.optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(bench: Bench, device: torch.device, precision: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    train_step(bench, device, precision)
    synchronize(device)
    return time.perf_counter() - start


def prime_optimizer(bench: Bench) -> None:
    """Have AdamW allocate its state, as after a first step, at the cost of an optimizer step alone: the
    next training step then holds the whole steady-state footprint, which is what memory is measured over
    (the optimizer step here peaks no higher than a real one, which also holds gradients and state)."""
    for group in bench.optimizer.param_groups:
        for param in group["params"]:
            param.grad = torch.zeros_like(param)
    bench.optimizer.step()
    bench.optimizer.zero_grad(set_to_none=True)


def counted_step(bench: Bench, args: argparse.Namespace, device: torch.device) -> None:
    """One step under torch's FLOP counter, for a model `mllm.encoders.flops` does not build (CoCa)."""
    with FlopCounterMode(display=False) as counter:
        train_step(bench, device, args.precision)
    bench.gflops_per_image = counter.get_total_flops() / args.batch / 1e9


# ------------------------------------------------------------------------------------------------ memory


def rss_bytes(field: str) -> int:
    """This process's `VmRSS` (resident now) or `VmHWM` (peak) from /proc, in bytes. Not ru_maxrss, which a
    child inherits from its parent through fork and exec and so may report the parent's peak."""
    status = Path("/proc/self/status")
    if not status.exists():
        raise SystemExit("CPU peak memory is read from /proc/self/status (Linux); use --device cuda elsewhere")
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def warm_process(device: torch.device, precision: str) -> None:
    """One AdamW step of a tiny layer, so that what torch sets up on first use is not charged to the first
    model measured: the optimizer imports torch._dynamo (about 100 MB of modules) and CUDA allocates
    cuBLAS workspaces (one per thread, and backward runs on autograd's own thread)."""
    layer = nn.Linear(64, 64, device=device)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=LR)
    for enabled in (False, precision == "bf16"):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            loss = layer(torch.ones(8, 64, device=device)).float().sum()
        loss.backward()
        optimizer.step()
    synchronize(device)


def memory_probe(name: str, args: argparse.Namespace, threads: int, result: Connection) -> None:
    """Child side of the CPU measurement: build one model, prime its optimizer, run one training step and
    send the peak RSS growth (or the traceback)."""
    try:
        torch.set_num_threads(threads)
        device = torch.device("cpu")
        if name == "coca":
            import open_clip  # noqa: F401  (before the baseline: its modules are not the model's memory)
        warm_process(device, args.precision)
        before = rss_bytes("VmRSS")
        bench = build(name, args, device)
        prime_optimizer(bench)
        train_step(bench, device, args.precision)
        result.send(rss_bytes("VmHWM") - before)
    except BaseException:
        result.send(traceback.format_exc())
        raise
    finally:
        result.close()


Probe = tuple[BaseProcess, Connection]


def start_memory_probes(names: list[str], args: argparse.Namespace) -> dict[str, Probe]:
    """One fresh process per model for its CPU peak: in this one, freed memory that the allocator keeps and
    the other models' weights would blur it.

    The processes are forks of a server that imported torch, this module and torch._dynamo once and has run
    no computation (so no OpenMP state is forked), which saves each probe seconds of imports. They run side
    by side and beside this process's FLOP counting and model building: nothing is timed until they end,
    and a process's peak RSS is its own."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "torch._dynamo"])
    probes = {}
    for name in names:
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=memory_probe, args=(name, args, torch.get_num_threads(), send),
                                  name=f"memory-probe-{name}", daemon=True)
        process.start()
        send.close()  # the child holds its own copy; closing ours lets recv() see a crashed child as EOF
        probes[name] = (process, receive)
    return probes


def collect_memory_probes(probes: dict[str, Probe]) -> dict[str, int]:
    peaks = {}
    for name, (process, receive) in probes.items():
        try:
            message = receive.recv()
        except EOFError:
            message = None
        process.join()
        if not isinstance(message, int):
            raise RuntimeError(f"memory probe of {name} failed (exit code {process.exitcode}):\n{message or ''}")
        peaks[name] = message
    return peaks


def cuda_build_and_measure(
    name: str, args: argparse.Namespace, device: torch.device, count: bool
) -> tuple[Bench, int]:
    """Build `name`, prime its optimizer and run one training step (FLOP-counted when `count`) with the peak
    counter reset; the models built earlier stay resident but untouched, so subtracting what was allocated
    before leaves this model's own peak."""
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    bench = build(name, args, device)
    prime_optimizer(bench)
    if count:
        counted_step(bench, args, device)
    else:
        train_step(bench, device, args.precision)
    synchronize(device)
    return bench, torch.cuda.max_memory_allocated(device) - before


# ------------------------------------------------------------------------------------------------ report


def peak_bf16_tflops(gpu_name: str) -> float | None:
    """The dense bf16 peak of a GPU named as torch.cuda.get_device_name() names it, if the table has it."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in gpu_name.lower():
            return tflops
    return None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return round(numerator / denominator, 3)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--vit", default="S/16")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--decoder", default="S", help="caption decoder variant; ov1's and CoCa's text towers "
                                                       "take the same shape")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed interleaved rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed interleaved rounds first (at least 1)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--caption-len", type=int, default=128)
    parser.add_argument("--text-len", type=int, default=80, help="ov1: ids per web-caption and sentence row")
    parser.add_argument("--keep-ratio", type=float, default=0.35)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch < 2:
        # One warm-up step keeps AdamW's first-step allocation out of the timing; the contrastive losses
        # need two images.
        parser.error("--steps and --warmup must be at least 1, --batch at least 2")
    if args.decoder not in DECODER_VARIANTS:
        parser.error(f"unknown --decoder {args.decoder!r}; available: {', '.join(DECODER_VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the result, write it to --json if given, and return it."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    wall_start = time.perf_counter()

    skipped: dict[str, str] = {}
    names = ["ov2", "ov1"]
    reason = coca_missing()
    if reason is None:
        names.append("coca")
    else:
        skipped["coca"] = reason
        log(f"CoCa: {reason}")

    probes = start_memory_probes(names, args) if device.type == "cpu" else {}
    # ov2 and ov1 are counted by mllm.encoders.flops on the meta device, CoCa on its first step.
    known_gflops = {
        name: count_flops(flops_config(name, args))["gflops_per_image"] for name in names if name != "coca"
    }
    memory: dict[str, int] = {}
    warm_process(device, args.precision)
    benches: dict[str, Bench] = {}
    for name in names:
        count = name not in known_gflops
        if device.type == "cuda":
            bench, memory[name] = cuda_build_and_measure(name, args, device, count)
            log(f"{name}: peak memory {memory[name] / 2**20:.0f} MiB (max_memory_allocated)")
        else:
            bench = build(name, args, device)
            if count:
                counted_step(bench, args, device)  # also an untimed warm-up step
        if not count:
            bench.gflops_per_image = known_gflops[name]
        benches[name] = bench
    if probes:  # collected only now, so that building here overlaps them, and before anything is timed
        memory = collect_memory_probes(probes)
        log(", ".join(f"{name} {peak / 2**20:.0f} MiB" for name, peak in memory.items())
            + " peak memory (fresh processes, RSS)")

    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.warmup + args.steps):
        took = {name: timed_step(bench, device, args.precision) for name, bench in benches.items()}
        if round_index >= args.warmup:
            for name, seconds in took.items():
                times[name].append(seconds)
        log(f"round {round_index + 1}/{args.warmup + args.steps}{' (warm-up)' if round_index < args.warmup else ''}: "
            + ", ".join(f"{name} {seconds * 1e3:.0f} ms" for name, seconds in took.items()))

    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    gpu_tflops = peak_bf16_tflops(gpu_name) if device.type == "cuda" else None
    median = {name: statistics.median(t) for name, t in times.items()}
    models: dict[str, dict[str, Any] | None] = {name: None for name in MODELS}
    for name, bench in benches.items():
        seconds = median[name]
        images_per_s = args.batch / seconds
        gflops = bench.gflops_per_image
        mfu = None
        if gpu_tflops is not None and gflops is not None:
            mfu = round(gflops * 1e9 * images_per_s / (gpu_tflops * 1e12), 4)
        models[name] = {
            "ms_per_step": round(seconds * 1e3, 1),
            "images_per_s": round(images_per_s, 3),
            "peak_memory_mib": round(memory[name] / 2**20, 1),
            "gflops_per_image": None if gflops is None else round(gflops, 2),
            "mfu": mfu,
            "params_m": round(sum(p.numel() for p in bench.model.parameters()) / 1e6, 2),
            "step_ms": [round(t * 1e3, 1) for t in times[name]],
        }

    result: dict[str, Any] = {
        **stamp(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        # From the unrounded numbers: a tiny configuration's memory can round to nothing.
        "ov2_vs_ov1_speedup": ratio(median.get("ov1"), median["ov2"]),
        "ov2_vs_ov1_memory_ratio": ratio(memory.get("ov1"), memory["ov2"]),
        "ov2_vs_coca_speedup": ratio(median.get("coca"), median["ov2"]),
        "ov2_vs_coca_memory_ratio": ratio(memory.get("coca"), memory["ov2"]),
        "paper_goal": PAPER_GOAL,
        "models": models,
        "skipped": skipped,
        "method": {
            "timing": f"median of {args.steps} interleaved training steps (forward, backward, AdamW) per model "
                      f"after {args.warmup} warm-up round(s), one fixed random batch",
            "memory": ("torch.cuda.max_memory_allocated over one step with AdamW's state allocated, minus the "
                       "allocation before the model was built" if device.type == "cuda" else
                       "peak RSS (VmHWM) of a fresh process building only that model and running one step with "
                       "AdamW's state allocated, minus its RSS before the build"),
            "flops": "forward + backward per image, torch FlopCounterMode (2 per multiply-add, matmul and "
                     "attention only): mllm.encoders.flops for ov2/ov1, a counted step for CoCa",
            "mfu": (f"FLOPs per image x images/s over {gpu_tflops} TFLOPs (dense bf16 peak of {gpu_name})"
                    if gpu_tflops is not None else
                    f"null: no peak bf16 FLOPs known for {gpu_name}" if device.type == "cuda" else "null on CPU"),
        },
        "wall_s": round(time.perf_counter() - wall_start, 1),
    }
    report(result, args.json)
    return result


if __name__ == "__main__":
    main()
