"""`mllm flops`: training FLOPs per image of a pretraining configuration, counted on the meta device.

The objective is built on the meta device (shapes only, no weights allocated) and one training step, forward
then backward, runs under `torch.utils.flop_counter.FlopCounterMode`, which counts matrix products,
convolutions and attention at 2 FLOPs per multiply-add and nothing element-wise. Captions are at their full
length (the release pads every caption to 128 ids) and the vocabulary is the release's 32,000.

The breakdown is exact per component: the objective's submodules (encoder, caption decoder, text encoder) have
their outputs cut from the graph while the step runs, so each one's backward is run and counted on its own;
`other` is the rest (loss and contrastive logits).

The OpenVision 2 paper's cost table counts the forward pass only (2 FLOPs per multiply-add, like here): the
forward figure lands within about 1% of its four rows when (a) OpenVision's text encoder is counted for one
caption per image, although training runs it on two (the web caption and a sentence; counting both puts
OpenVision L/14 at +4%), and (b) the SoViT-400M/14 rows use caption decoder and text encoder of the So400m
block shape (`--decoder So400m --text So400m`; with the L decoder they come out 27% and 45% low). All four
land about 1% under the paper, a remainder not pinned down (element-wise work, which the counter skips, is
a candidate). A training step costs about three times its forward pass.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import mllm.encoders.objective_options  # noqa: F401  (importing it registers ov1 and cappa)
from mllm.encoders.objectives import OBJECTIVES, PretrainObjective


@dataclass(frozen=True)
class PaperRow:
    gflops: float  # forward GFLOPs per image in the OpenVision 2 paper's cost table
    decoder: str  # the caption decoder (and, for ov1, text encoder) variant the row fits
    note: str


PAPER_ROWS: dict[tuple[str, str, int], PaperRow] = {
    ("ov2", "L/14", 224): PaperRow(208.90, "L", "forward pass"),
    ("ov1", "L/14", 224): PaperRow(271.75, "L", "forward pass, text encoder counted for one caption"),
    ("ov2", "So400m/14", 384): PaperRow(1017.74, "So400m", "forward pass, So400m decoder (inferred)"),
    ("ov1", "So400m/14", 384): PaperRow(
        1636.75, "So400m", "forward pass, So400m decoder and text encoder (inferred), text counted for one caption"
    ),
}

# Report names of the objectives' submodules.
COMPONENT_NAMES = {"vision": "encoder", "decoder": "decoder", "text": "text_encoder"}


@dataclass
class FlopsConfig:
    """Options of `mllm flops`."""

    objective: str = "ov2"  # ov2, ov1 or cappa
    vit: str = "L/14"
    resolution: int = 224
    decoder: str = "L"  # caption decoder variant
    text: str = "L"  # ov1: text encoder variant
    keep_ratio: float = 0.35  # ov2: share of visual tokens the decoder sees
    caption_len: int = 128  # caption ids per image, bos and eos included
    text_len: int = 80  # ov1: ids per web-caption and sentence row
    vocab_size: int = 32000
    batch: int = 1  # images per counted step (only the contrastive logits grow with it)
    json: bool = field(default=False, metadata={"flag": True, "help": "print one JSON object"})


def build_objective(cfg: FlopsConfig, device: torch.device | str = "meta") -> PretrainObjective:
    """The objective of `cfg` in training mode, on the meta device (shapes only) unless `device` says
    otherwise; `benchmarks/encoder_efficiency.py` builds the same configuration with real weights."""
    options: dict[str, Any] = {"vit": cfg.vit, "image_size": cfg.resolution, "decoder": cfg.decoder,
                               "max_text_len": cfg.caption_len}
    if cfg.objective == "ov2":
        options["keep_ratio"] = cfg.keep_ratio
    elif cfg.objective == "ov1":
        options.update(text=cfg.text, text_len=cfg.text_len)
    objective_cls = OBJECTIVES.get(cfg.objective)
    config = objective_cls.config_class(**options)
    with torch.device(device):
        return objective_cls(config, vocab_size=cfg.vocab_size, pad_id=0).train()


def fake_batch(
    objective: PretrainObjective, cfg: FlopsConfig, device: torch.device | str = "meta"
) -> dict[str, Tensor]:
    """`cfg.batch` random images and full-length random ids with no padding (ids start at 1, the pad id being
    0), so every caption position counts; on the meta device unless `device` says otherwise."""
    batch = {
        "pixel_values": torch.randn(cfg.batch, 3, cfg.resolution, cfg.resolution, device=device),
        "caption_ids": torch.randint(1, cfg.vocab_size, (cfg.batch, cfg.caption_len), device=device),
    }
    text_length = objective.text_length()
    if text_length is not None:
        for key in ("web_ids", "sentence_ids"):
            batch[key] = torch.randint(1, cfg.vocab_size, (cfg.batch, text_length), device=device)
    return batch


def _cut(value: Any, leaves: list[Tensor], roots: list[Tensor]) -> Any:
    """`value` with each grad-carrying tensor (also inside a dataclass output) replaced by a fresh leaf."""
    if isinstance(value, Tensor):
        if not value.requires_grad:
            return value
        leaf = value.detach().requires_grad_()
        roots.append(value)
        leaves.append(leaf)
        return leaf
    if dataclasses.is_dataclass(value):
        changes = {f.name: _cut(getattr(value, f.name), leaves, roots) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    return value


@contextmanager
def cut_outputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, tuple[list[Tensor], list[Tensor]]]]:
    """While active, each module's output leaves the graph as fresh leaves. Yields name -> (roots, leaves),
    filled in the order the modules are first called."""
    cuts: dict[str, tuple[list[Tensor], list[Tensor]]] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            roots, leaves = cuts.setdefault(name, ([], []))
            return _cut(output, leaves, roots)

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        yield cuts
    finally:
        for handle in handles:
            handle.remove()


def count_flops(cfg: FlopsConfig) -> dict[str, Any]:
    """Training and forward GFLOPs per image of `cfg`, total and by component."""
    objective = build_objective(cfg)
    batch = fake_batch(objective, cfg)
    components = {
        name: module for name, module in objective.named_children() if next(module.parameters(), None) is not None
    }
    with cut_outputs(components) as cuts, FlopCounterMode(display=False) as counter:
        loss = objective(batch)["loss"]
    per_module = counter.get_flop_counts()
    forward = {name: sum(per_module.get(f"{type(objective).__name__}.{name}", {}).values()) for name in cuts}
    forward["other"] = counter.get_total_flops() - sum(forward.values())

    with FlopCounterMode(display=False) as counter:
        loss.backward()
    backward = {"other": counter.get_total_flops()}
    # Later components read earlier ones' outputs (the decoder reads the encoder's tokens), so running their
    # backward in reverse call order hands each component its complete output gradient.
    for name in reversed(list(cuts)):
        roots, leaves = cuts[name]
        pairs = [(root, leaf.grad) for root, leaf in zip(roots, leaves, strict=True) if leaf.grad is not None]
        with FlopCounterMode(display=False) as counter:
            torch.autograd.backward([root for root, _ in pairs], [grad for _, grad in pairs])
        backward[name] = counter.get_total_flops()

    def giga(flops: float) -> float:
        return round(flops / cfg.batch / 1e9, 2)

    breakdown = {
        COMPONENT_NAMES.get(name, name): {"train": giga(forward[name] + backward[name]), "forward": giga(forward[name])}
        for name in forward
    }
    forward_total = sum(forward.values())
    report: dict[str, Any] = {
        **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "json"},
        "gflops_per_image": giga(forward_total + sum(backward.values())),
        "forward_gflops_per_image": giga(forward_total),
        "breakdown": breakdown,
        "counting": "FlopCounterMode on the meta device; 2 FLOPs per multiply-add; matmul, conv and attention "
                    "only; gflops_per_image = forward + backward of one training step",
    }
    row = PAPER_ROWS.get((cfg.objective, cfg.vit, cfg.resolution))
    if row is not None:
        # The paper's convention: forward only, the text encoder (two captions per image here) counted once.
        paper_convention = forward_total - forward.get("text", 0) / 2
        report["paper"] = {
            "gflops_per_image": row.gflops,
            "counts": row.note,
            "setting": paper_setting(cfg.objective, row),
            "same_convention_gflops_per_image": giga(paper_convention),
            "difference": round(paper_convention / cfg.batch / 1e9 / row.gflops - 1.0, 4),
        }
    return report


def paper_setting(objective: str, row: PaperRow) -> dict[str, Any]:
    """The options a paper row was counted with (as far as they matter to the count)."""
    setting: dict[str, Any] = {"decoder": row.decoder}
    if objective == "ov1":
        setting["text"] = row.decoder
    if objective == "ov2":
        setting["keep_ratio"] = 0.35
    return setting


def render(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    lines = [
        f"{report['objective']} {report['vit']} @ {report['resolution']} px, decoder {report['decoder']}: "
        f"{report['gflops_per_image']:.2f} GFLOPs/image per training step (forward + backward), "
        f"forward {report['forward_gflops_per_image']:.2f}",
    ]
    for name, part in report["breakdown"].items():
        lines.append(f"  {name:<13} {part['train']:>10.2f} train {part['forward']:>10.2f} forward")
    paper = report.get("paper")
    if paper is not None:
        lines.append(f"  paper: {paper['gflops_per_image']:.2f} ({paper['counts']}); counted the same way here: "
                     f"{paper['same_convention_gflops_per_image']:.2f} ({100 * paper['difference']:+.1f}%)")
        differing = {k: v for k, v in paper["setting"].items() if report[k] != v}
        if differing:
            lines.append("  the paper's row was counted with " + " ".join(f"--{k} {v}" for k, v in differing.items()))
    return "\n".join(lines)


def run_flops(cfg: FlopsConfig) -> dict[str, Any]:
    """Count, print (text or JSON) and return the report."""
    report = count_flops(cfg)
    print(json.dumps(report) if cfg.json else render(report), flush=True)
    return report
