"""Does an unseen colour-shape pair hide its shape, from the encoder's features or from the VLM's answers?

The world holds out one colour for every shape from training; benchmark scenes contain at least one such pair.
Two checks on freshly rendered `objects` scenes (JPEG quality 95, as the world writes them; `--variation` as
`mllm world --variation`):

- encoder: a linear shape probe (10 classes) on each object's grid-cell feature, trained on the objects of
  1500 training scenes, scored on the objects of 600 benchmark scenes, split into objects of held-out pairs
  and of seen pairs; for the pretrained encoder and a randomly initialised one of the same architecture. The
  feature is the tower's hidden state `--layer` (the VLM's -2 by default; 0 = patch embeddings); a finer
  tower's k x k patches of a cell are put side by side (Pico/16 at 96 px: four, 4 x 128 wide).
- VLM (with --model): POPE's "Is there a <shape> in the image?", teacher-forced ("yes" vs "no" logit), over
  training-like and benchmark scenes, one question per object and one about an absent shape per scene.
  With --sketch the VLM's LLM alone answers the same questions about the same scenes, the image positions
  holding a sketch: per grid cell the sum of the " colour" and " shape" input embeddings, zero when empty.

    python benchmarks/heldout_pair_probe.py --encoder runs/demo/pretrain/encoder --model runs/demo/existence/model \
        --sketch --out benchmarks/results/heldout_pair_probe.json
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import sketch_lm
import torch
from encoder_probe import fit_linear, grid_cells
from PIL import Image
from report import report, stamp
from transformers import PreTrainedTokenizerBase

from mllm.data.conversation import encode_conversation
from mllm.data.images import to_tensor
from mllm.encoders.tower import EncoderConfig, build_tower
from mllm.eval.prompts import build_prompt
from mllm.vlm import VisionLanguageModel
from mllm.world.render import render
from mllm.world.scene import SHAPES, Holdout, Scene, Shape, sample_scene

HOLDOUT = Holdout.sample(0)  # the demo world's (seed 0)
Scenes = list[tuple[Scene, Image.Image]]
Question = tuple[Scene, Image.Image, str, bool, str]  # scene, its image, shape asked, present, group


def scenes(n: int, held_out: bool, seed: int, variation: float = 0.0) -> Scenes:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, "objects", HOLDOUT, held_out=held_out)
        buffer = io.BytesIO()
        render(scene, 96, rng, variation).save(buffer, "JPEG", quality=95)
        out.append((scene, Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return out


def is_held_out(shape: Shape) -> bool:
    return (shape.shape, shape.colour) in HOLDOUT.shape_colour


@torch.no_grad()
def cell_features(encoder: Path, random_init: bool, data: Scenes, layer: int = -2) -> tuple[torch.Tensor, ...]:
    """Each object's cell feature (hidden state `layer` of the tower), shape label and whether its pair is held out."""
    tower = build_tower(EncoderConfig(path=str(encoder), random_init=random_init, feature_layer=layer)).eval()
    pixels = torch.stack([to_tensor(image, tower.image) for _, image in data])
    x = grid_cells(torch.cat([tower(pixels[i:i + 128]) for i in range(0, len(data), 128)]))
    objects = [(i, s) for i, (scene, _) in enumerate(data) for s in scene.shapes]
    return (torch.stack([x[i, s.cell] for i, s in objects]), torch.tensor([SHAPES.index(s.shape) for _, s in objects]),
            torch.tensor([is_held_out(s) for _, s in objects]))


def shape_probe(encoder: Path, random_init: bool, train: Scenes, test: Scenes,
                layer: int = -2) -> dict[str, float | int]:
    x_train, y_train, _ = cell_features(encoder, random_init, train, layer)
    x_test, y_test, held = cell_features(encoder, random_init, test, layer)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    w, b = fit_linear(x_train, y_train, len(SHAPES), steps=1500)
    right_train = (x_train @ w + b).argmax(1) == y_train
    right = (x_test @ w + b).argmax(1) == y_test
    return {"train_objects": round(right_train.float().mean().item(), 3),
            "heldout_pair_objects": round(right[held].float().mean().item(), 3), "n_heldout_pair": int(held.sum()),
            "seen_pair_objects": round(right[~held].float().mean().item(), 3), "n_seen_pair": int((~held).sum())}


def questions(n: int) -> list[Question]:
    """One question per object and one about an absent shape per scene; scenes and choices on separate streams."""
    out = []
    for kind, held_out, seed in (("train_scene", False, 3), ("heldout_scene", True, 4)):
        choice = random.Random(seed + 100)
        for scene, image in scenes(n, held_out, seed):
            for s in scene.shapes:
                which = f"_{'heldout' if is_held_out(s) else 'seen'}_object" if held_out else ""
                out.append((scene, image, s.shape, True, f"{kind}/pos{which}"))
            absent = [x for x in SHAPES if x not in {s.shape for s in scene.shapes}]
            out.append((scene, image, choice.choice(absent), False, f"{kind}/neg"))
    return out


@torch.no_grad()
def yes_no(model: VisionLanguageModel, tok: PreTrainedTokenizerBase, asked: list[Question],
           sketch: bool) -> dict[str, dict[str, float | int]]:
    """Accuracy and count per group; with `sketch` the LLM reads a sketch of each scene instead of its image."""
    table = model.llm.get_input_embeddings()
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    counts: dict[str, list[int]] = {}
    for scene, image, shape, present, group in asked:
        prompt = build_prompt("pope", {"question": f"Is there a {shape} in the image?"})
        conv = [{"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": "yes" if present else "no"}]
        ids, labels = encode_conversation(tok, conv, "chat", model.num_image_tokens, 256)
        ids = torch.tensor([ids])
        if sketch:
            cells = sketch_lm.sketch(table, tok, {s.cell: (s.colour, s.shape) for s in scene.shapes})
            embeds = table(ids).masked_scatter((ids == model.image_token_id).unsqueeze(-1), cells)
        else:
            embeds = model.embed(ids, model.preprocess_images([image])[0])
        logits = model.llm(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits[0]
        answer = logits[next(i for i, label in enumerate(labels) if label != -100) - 1]
        count = counts.setdefault(group, [0, 0])
        count[0] += bool(answer[yes] > answer[no]) == present
        count[1] += 1
    return {group: {"accuracy": round(right / n, 3), "n": n} for group, (right, n) in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", type=Path, required=True)
    parser.add_argument("--model", type=Path, help="VLM folder: also ask it yes/no questions")
    parser.add_argument("--sketch", action="store_true", help="also ask the VLM's LLM with scene sketches")
    parser.add_argument("--scenes", type=int, default=150, help="scenes of each kind for the VLM")
    parser.add_argument("--layer", type=int, default=-2, help="the tower's hidden state to probe (the VLM's: -2)")
    parser.add_argument("--variation", type=float, default=0.0, help="the world's picture variation (render)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.sketch and args.model is None:
        parser.error("--sketch needs --model")
    torch.manual_seed(0)
    train, test = scenes(1500, False, 1, args.variation), scenes(600, True, 2, args.variation)
    pairs = sorted(f"{colour} {shape}" for shape, colour in HOLDOUT.shape_colour)
    result = {**stamp(), "encoder": str(args.encoder), "feature_layer": args.layer, "variation": args.variation,
              "holdout_pairs": pairs,
              "shape_probe": {name: shape_probe(args.encoder, random_init, train, test, args.layer)
                              for name, random_init in (("pretrained", False), ("random_init", True))}}
    if args.model is not None:
        model, tok = VisionLanguageModel.from_pretrained(args.model)
        model.eval()
        asked = questions(args.scenes)
        result |= {"model": str(args.model), "yes_no_image": yes_no(model, tok, asked, sketch=False)}
        if args.sketch:
            result["yes_no_sketch"] = yes_no(model, tok, asked, sketch=True)
    report(result, args.out)


if __name__ == "__main__":
    main()
