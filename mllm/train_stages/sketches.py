"""The sketch part of `mllm pretrain-lm`: teach a from-scratch LM to answer about scene sketches.

A sketch (`mllm.world.sketches`) stands where a sample's image tokens go: one vector per image token, the sum
of the LM's own input embeddings of its grid cell's words. Trained on the world's alignment captions,
instructions and one-turn existence and reading questions with sketches in place of images, the LM learns to
look up what its image positions hold, which a tiny LM trained on text alone never does; the VLM's connector
then has a target the LM already reads (an encoder cell's features to something like its words' embeddings).

Each step is one batch, as the recipe measured in `benchmarks/sketch_lm.py` is: `share` of it sketch samples
of one kind (drawn by the kind weights; existence questions grow from scenes of one filled cell to all
scenes along `existence_curriculum`), `text_share` corpus lines and text conversations, the rest
`RepeatedWords`; the loss is the sum of the three parts' token means, so one-word answers weigh as much as
long captions.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, SequentialSampler
from transformers import Trainer

from mllm.data.conversation import IGNORE_INDEX
from mllm.data.images import ImageConfig
from mllm.data.llava_json import ConversationDataset, collate

SKETCH, TEXT, REPEAT = 0, 1, 2  # batch parts
KINDS = ("align", "instruct", "existence", "reading")


@dataclass
class SketchConfig:
    """Sketch training of `mllm pretrain-lm`; off while `steps` is 0."""

    world: str = ""          # a world folder: its stage_data/ and sketch/ (needed when steps > 0)
    steps: int = 0           # optimizer steps, each one batch of the language config's batch_size
    share: float = 0.5       # of each batch: sketch samples
    text_share: float = 0.0  # of each batch: corpus lines and text conversations; the rest are word repeats
    existence_weight: float = 0.6  # chance that a step's sketch samples are existence (POPE) questions
    reading_weight: float = 0.15   # ... reading questions; alignment captions and instructions share the rest
    # Steps up to which existence questions are about scenes of at most 1, 2, ... filled cells (one cell to
    # check before nine): [500, 650] is one until step 500, at most two until 650, then all scenes.
    existence_curriculum: list[int] = field(default_factory=list)
    # Existence steps draw images and ask all their questions (a present and an absent shape), so that within a
    # batch the image alone never predicts the answer: the check forms on more seeds, though the demo's VLMs
    # did not gain from it (benchmarks/results/demo_sketch_recipe_cpu.json).
    existence_pairs: bool = False
    side: int = 3            # image tokens per side: 3 for a /32 tower at 96 px, 6 for a /16 one
    held_out: float = 0.1    # share of sketched images kept out of training and scored at the end

    def check(self) -> None:
        if self.steps < 0:
            raise ValueError(f"sketch.steps must be >= 0, got {self.steps}")
        if not self.world:
            raise ValueError("sketch.world must name a world folder when sketch.steps > 0")
        if not (0 < self.share and self.share + self.text_share <= 1):
            raise ValueError(f"sketch.share must be > 0 and share + text_share <= 1, got {self.share}, "
                             f"{self.text_share}")
        if self.existence_weight < 0 or self.reading_weight < 0 or self.existence_weight + self.reading_weight > 1:
            raise ValueError("sketch.existence_weight and reading_weight must be >= 0 with a sum <= 1")
        if self.side not in (3, 6):
            raise ValueError(f"sketch.side must be 3 or 6, got {self.side}")
        if sorted(self.existence_curriculum) != self.existence_curriculum or any(
                s < 0 for s in self.existence_curriculum):
            raise ValueError(f"sketch.existence_curriculum must be ascending steps, got {self.existence_curriculum}")
        if not 0 <= self.held_out < 1:
            raise ValueError(f"sketch.held_out must be in [0, 1), got {self.held_out}")


def load_cells(path: Path) -> dict[str, dict[int, list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"sketch cells not found: {path} (written by `mllm world`)")
    try:
        raw = json.loads(path.read_text())
        return {image: {int(cell): list(words) for cell, words in cells.items()} for image, cells in raw.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a JSON object of image -> {{cell: [words]}}: {err}") from err


class SketchSet:
    """One stage-data file's samples whose image has a sketch, split by image into training and held-out."""

    def __init__(self, path: Path, fmt: str, images: Path, tokenizer: Any, cells: dict[str, dict[int, list[str]]],
                 held: set[str], side: int, max_length: int) -> None:
        self.data = ConversationDataset(path, images, tokenizer, ImageConfig(), fmt, side * side, max_length)
        self.images = [str(Path(s.image).relative_to(images)) if s.image else "" for s in self.data.samples]
        usable = [i for i, image in enumerate(self.images) if image in cells]
        if not usable:
            raise ValueError(f"{path}: no sample shows an image that has a sketch")
        self.train = [i for i in usable if self.images[i] not in held]
        self.held_out = [i for i in usable if self.images[i] in held]


class SketchBatches(Dataset):
    """Item `step` is that step's whole batch, a function of (`seed`, `step`) alone."""

    def __init__(self, sets: dict[str, SketchSet], cells: dict[str, dict[int, list[str]]],
                 cell_ids: dict[str, list[int]], text: Dataset | None, repeats: Dataset | None, cfg: SketchConfig,
                 batch_size: int, pad_id: int, seed: int) -> None:
        self.sets, self.cells, self.cell_ids, self.text, self.repeats = sets, cells, cell_ids, text, repeats
        self.cfg, self.pad_id, self.seed = cfg, pad_id, seed
        self.n_sketch = max(1, round(batch_size * cfg.share))
        self.n_text = round(batch_size * cfg.text_share) if text is not None else 0
        self.n_repeat = batch_size - self.n_sketch - self.n_text if repeats is not None else 0
        rest = (1 - cfg.existence_weight - cfg.reading_weight) / 2
        self.kinds = [k for k in KINDS if k in sets]
        weights = {"align": rest, "instruct": rest, "existence": cfg.existence_weight, "reading": cfg.reading_weight}
        self.weights = [weights[k] for k in self.kinds]
        existence = sets.get("existence")
        self.small_scenes = [[i for i in existence.train if len(cells[existence.images[i]]) <= limit]
                             for limit in range(1, len(cfg.existence_curriculum) + 1)] if existence else []
        # Existence pools (each curriculum stage's, then all training questions) as groups of one image's questions.
        self.existence_groups = [_by_image(pool, existence.images) for pool in [*self.small_scenes, existence.train]
                                 ] if existence and cfg.existence_pairs else []

    def __len__(self) -> int:
        return self.cfg.steps

    def draw(self, step: int) -> tuple[str, list[int], random.Random]:
        """The kind of the step's sketch samples, their indices in that kind's set, and the step's generator."""
        rng = random.Random(self.seed * 1_000_003 + step)
        kind = rng.choices(self.kinds, self.weights)[0]
        pool = self.sets[kind].train
        if kind == "existence":
            stage = next((k for k, last in enumerate(self.cfg.existence_curriculum) if step < last), -1)
            if stage >= 0 and self.small_scenes[stage]:
                pool = self.small_scenes[stage]
            else:
                stage = -1  # all training questions
            if self.cfg.existence_pairs:
                groups = self.existence_groups[stage]
                chosen = rng.sample(groups, min(max(1, self.n_sketch // 2), len(groups)))
                return kind, [i for group in chosen for i in group], rng
        return kind, rng.sample(pool, min(self.n_sketch, len(pool))), rng

    def encode(self, kind: str, indices: list[int]) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor, torch.Tensor]:
        """Rows of samples `indices` of `sets[kind]` for `collate`, and their sketches' cell tokens and mask."""
        data = self.sets[kind]
        rows = [{"input_ids": torch.tensor(data.data.samples[i].input_ids),
                 "labels": torch.tensor(data.data.samples[i].labels)} for i in indices]
        return rows, *self.cell_tokens([data.images[i] for i in indices])

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        kind, chosen, rng = self.draw(step)
        rows, sketch_ids, sketch_mask = self.encode(kind, chosen)
        parts = [SKETCH] * len(rows)
        for documents, n, part in ((self.text, self.n_text, TEXT), (self.repeats, self.n_repeat, REPEAT)):
            if n:
                rows += [documents[rng.randrange(len(documents))] for _ in range(n)]
                parts += [part] * n
        batch = collate(rows, self.pad_id)
        batch["part"], batch["sketch_ids"], batch["sketch_mask"] = torch.tensor(parts), sketch_ids, sketch_mask
        return batch

    def cell_tokens(self, images: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of every image token's words, padded: [images x side^2, K] and its mask."""
        side, k = self.cfg.side, self.cfg.side // 3
        rows = []
        for image in images:
            cells = self.cells[image]
            grid = [[t for w in cells.get(cell, []) for t in self.cell_ids[w]] for cell in range(9)]
            rows += [grid[(r // k) * 3 + c // k] for r in range(side) for c in range(side)]
        width = max(1, max(len(r) for r in rows))
        ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1.0
        return ids, mask


def _by_image(indices: list[int], images: list[str]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(images[i], []).append(i)
    return list(groups.values())


def sketch_embeddings(embed: nn.Embedding, input_ids: torch.Tensor, image_id: int, sketch_ids: torch.Tensor,
                      sketch_mask: torch.Tensor) -> torch.Tensor:
    """Input embeddings with each image token's replaced by the sum of its cell's word embeddings, in order."""
    sketches = (embed(sketch_ids) * sketch_mask.unsqueeze(-1).to(embed.weight.dtype)).sum(1)
    return embed(input_ids).masked_scatter((input_ids == image_id).unsqueeze(-1), sketches)


def part_losses(logits: torch.Tensor, labels: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """Sum over the batch's parts of each part's mean next-token loss."""
    targets = labels[:, 1:]
    tokens = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="none").view_as(targets)
    counted = (targets != IGNORE_INDEX).float()
    total = logits.new_zeros((), dtype=torch.float32)
    for part in parts.unique():
        rows = parts == part
        total = total + tokens[rows].sum() / counted[rows].sum().clamp(min=1)
    return total


def first(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The collator of one-batch items."""
    return items[0]


class SketchTrainer(Trainer):
    """The HF Trainer over `SketchBatches`, in step order (the curriculum depends on it)."""

    def __init__(self, *args: Any, image_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image_id = image_id

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        embeds = sketch_embeddings(model.get_input_embeddings(), inputs["input_ids"], self.image_id,
                                   inputs["sketch_ids"], inputs["sketch_mask"])
        outputs = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
        loss = part_losses(outputs.logits, inputs["labels"], inputs["part"])
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def held_out_scores(model: nn.Module, batches: SketchBatches, image_id: int, batch_size: int = 64
                    ) -> dict[str, float]:
    """On held-out images: the share of answers that are the model's top pick at every token (teacher-forced)
    for existence and reading questions, and the held-out count."""
    model.eval()
    device = next(model.parameters()).device
    scores: dict[str, float] = {}
    for kind in ("existence", "reading"):
        if kind not in batches.sets or not batches.sets[kind].held_out:
            continue
        indices, right = batches.sets[kind].held_out, []
        for start in range(0, len(indices), batch_size):
            rows, ids, mask = batches.encode(kind, indices[start : start + batch_size])
            batch = {k: v.to(device) for k, v in collate(rows, batches.pad_id).items()}
            embeds = sketch_embeddings(model.get_input_embeddings(), batch["input_ids"], image_id, ids.to(device),
                                       mask.to(device))
            logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            hit = (logits[:, :-1].argmax(-1) == labels) | (labels == IGNORE_INDEX)
            right += hit.all(1).tolist()
        scores[kind] = round(sum(right) / len(right), 3)
        scores[f"{kind}_questions"] = len(right)
    model.train()
    return scores
