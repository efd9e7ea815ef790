"""Scene sketches: what a language model can be taught to read before any vision encoder exists.

A pretrained LLM brings in-context skills (is this named thing in my context? copy the word it holds) that a
tiny LM trained from scratch on the world's text lacks, and a VLM built on such an LM answers from its
language prior. A sketch gives that LM an image in its own terms: one vector per grid cell, the sum of the
input embeddings of the cell's words (an object's colour and shape; a sign's word, a number's digits, and its
colour in every cell of its row), zero for an empty cell. `mllm pretrain-lm` trains on stage data with the
sketch where the image tokens go (`mllm.train_stages.sketches`), and a connector later learns to put the
encoder's features where the sketch was.

The world writes, beside its stage data:
    sketch/cells.json       image -> {cell index: [words]} for every training image that is not a chart
    sketch/existence.json   one-turn POPE questions about those images that hold shapes (a "yes" and a "no"
                            each, the "no" by POPE's negative sampling)
    sketch/reading.json     one-turn TextVQA and OCRBench questions about every sign
One turn each, because in one conversation a model learns a later answer from an earlier one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mllm.eval.prompts import build_prompt
from mllm.world import language
from mllm.world.scene import Scene

Cells = dict[int, list[str]]


def sign_cells(text: str, colour: str, row: int) -> Cells:
    """A sign's sketch: its word (a number as its digits) and its colour in every cell of its row."""
    words = list(text) if text.isdigit() else [text]
    return {cell: [*words, colour] for cell in range(3 * row, 3 * row + 3)}


def scene_cells(scene: Scene) -> Cells | None:
    """The words each grid cell of a scene's sketch sums; None for charts, which have no grid."""
    if scene.kind == "chart":
        return None
    cells: Cells = {shape.cell: [shape.colour, shape.shape] for shape in scene.shapes}
    if scene.text is not None:
        cells.update(sign_cells(scene.text.text, scene.text.colour, scene.text.row))
    return cells


def write_sketch_data(out: Path, scenes: list[tuple[str, Scene]], popular: list[str], seed: int,
                      categories: tuple[str, ...]) -> dict[str, int]:
    """Write `out/sketch/` for the training scenes `(key, scene)`; how many records each file holds."""
    rng = random.Random(f"sketch-{seed}")
    cells, existence, reading = {}, [], []
    for key, scene in scenes:
        sketch = scene_cells(scene)
        if sketch is None:
            continue
        cells[f"train/{key}.jpg"] = sketch
        for i, doc in enumerate(language.pope(scene, rng, rng.choice(categories), popular)):
            existence.append(language.record(key, [(build_prompt("pope", doc), doc["answer"])], f"-pope{i}"))
        for family in ("textvqa", "ocrbench"):
            for i, doc in enumerate(getattr(language, family)(scene, rng)):
                turn = (build_prompt(family, doc), language.training_answer(family, doc))
                reading.append(language.record(key, [turn], f"-{family}{i}"))
    folder = out / "sketch"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"cells": cells, "existence": existence, "reading": reading}
    for name, data in files.items():
        (folder / f"{name}.json").write_text(json.dumps(data, indent=1))
    return {name: len(data) for name, data in files.items()}
