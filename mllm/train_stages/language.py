"""`mllm pretrain-lm`: warm up a causal LM on text, for worlds where no pretrained LLM exists.

LLaVA starts from a pretrained, instruction-following LLM; the synthetic world cannot download one, so
this trains the tiny Llama on the world's prose (every token) and on text-only conversations in LLaVA
format (assistant replies only, rendered with the chat template), optionally mixed with repeated runs of
the corpus's words (`repeat_fraction`, see `RepeatedWords`); with `sketch.steps` it trains instead on the
world's stage data with scene sketches where the images go (`mllm.train_stages.sketches`), so that the LM
can look up what its image positions hold before any encoder is attached. The output is a plain Hugging
Face folder (model + tokenizer) that any recipe loads through `llm.path`, like a downloaded Llama-3 or
SmolLM.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from mllm.data.conversation import IGNORE_INDEX, bos
from mllm.data.images import ImageConfig
from mllm.data.llava_json import ConversationDataset, collate
from mllm.llm import IMAGE_TOKEN, LLMConfig, build_llm, load_tokenizer
from mllm.train_stages.sketches import (
    SketchBatches,
    SketchConfig,
    SketchSet,
    SketchTrainer,
    first,
    held_out_scores,
    load_cells,
)
from mllm.train_stages.vlm_trainer import LengthGroupedTrainer, training_arguments

log = logging.getLogger(__name__)


@dataclass
class LanguageConfig:
    """Options of `mllm pretrain-lm`."""

    out: str = "runs/lm"
    corpus: str = "runs/world/text/corpus.txt"  # one document a line
    conversations: list[str] = field(default_factory=lambda: ["runs/world/text/reading.json"])
    llm: LLMConfig = field(default_factory=LLMConfig)
    epochs: float = 1.0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_ratio: float = 0.05
    max_length: int = 256
    # Share of the training documents that are runs of the corpus's words followed by their exact repeat
    # (`RepeatedWords`); 0 trains on the corpus and conversations alone.
    repeat_fraction: float = 0.0
    lr_schedule: str = "cosine"  # any transformers scheduler name, e.g. "constant"
    adam_beta2: float = 0.999
    # Scene sketches in place of images (`mllm.train_stages.sketches`): with `sketch.steps` > 0 training runs
    # that many steps of sketch, text and repeat batches instead of `epochs` over the text.
    sketch: SketchConfig = field(default_factory=SketchConfig)
    seed: int = 0
    logging_steps: int = 10


class LineCorpus(Dataset):
    """Each non-empty line of a text file, tokenized between the begin- and end-of-text tokens."""

    def __init__(self, path: Path, tokenizer: Any, max_length: int) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"corpus not found: {path}")
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as err:
            raise ValueError(f"corpus {path} is not UTF-8 text: {err}") from err
        lines = [line for line in lines if line]
        if not lines:
            raise ValueError(f"corpus {path} has no text")
        encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
        first = bos(tokenizer)
        self.items = [first + ids[: max_length - 1 - len(first)] + [tokenizer.eos_token_id] for ids in encoded]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.items]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.items[index])
        return {"input_ids": ids, "labels": ids}


def corpus_words(path: Path) -> list[str]:
    """The distinct words of a text file, punctuation stripped, sorted."""
    return sorted(set(re.findall(r"[A-Za-z0-9]+", path.read_text(encoding="utf-8"))))


class RepeatedWords(Dataset):
    """Runs of random words from a corpus, each followed by its exact repeat; loss on the repeat only.

    Web text repeats itself (names, quotes, code), and that is what lets a pretrained LLM form
    match-and-copy (induction) heads; the world's corpus never repeats a run of words. Without such heads a
    from-scratch LM of the demo's size does not learn to match a question's word against its context even
    in 10,000 steps; with half of each batch made of repeats it learns "Is there a X?" over lists of one or
    two objects in under a thousand, and over four-object lists or the world's captions in about 2,000
    (benchmarks/lm_existence_probe.py). Document `i` depends only on (`seed`, `i`).
    """

    def __init__(self, words: list[list[int]], count: int, bos_ids: list[int], seed: int = 0,
                 min_words: int = 4, max_words: int = 12) -> None:
        if not words:
            raise ValueError("RepeatedWords needs at least one word")
        self.words, self.count, self.bos_ids, self.seed = words, count, bos_ids, seed
        self.min_words, self.max_words = min_words, max_words
        self.lengths = [len(self._ids(i)[0]) for i in range(count)]

    @classmethod
    def from_corpus(cls, path: Path, tokenizer: Any, count: int, seed: int = 0) -> RepeatedWords:
        """The words of `path`, each tokenized as it reads mid-sentence."""
        words = tokenizer([" " + w for w in corpus_words(path)], add_special_tokens=False)["input_ids"]
        return cls(words, count, bos(tokenizer), seed)

    def _ids(self, index: int) -> tuple[list[int], int]:
        rng = random.Random(self.seed * 1_000_003 + index)
        run = [t for _ in range(rng.randint(self.min_words, self.max_words)) for t in rng.choice(self.words)]
        return self.bos_ids + run + run, len(self.bos_ids) + len(run)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids, start = self._ids(index)
        labels = torch.tensor(ids)
        labels[:start] = IGNORE_INDEX
        return {"input_ids": torch.tensor(ids), "labels": labels}


def pretrain_language(cfg: LanguageConfig) -> dict[str, Any]:
    if not 0.0 <= cfg.repeat_fraction < 1.0:
        raise ValueError(f"repeat_fraction must be in [0, 1), got {cfg.repeat_fraction}")
    if cfg.sketch.steps:
        cfg.sketch.check()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.llm)
    model = build_llm(cfg.llm, tokenizer)
    parts: list[Dataset] = []
    if not cfg.sketch.steps or cfg.sketch.text_share:
        parts.append(LineCorpus(Path(cfg.corpus), tokenizer, cfg.max_length))
        parts += [ConversationDataset(path, None, tokenizer, ImageConfig(), "chat", 0, cfg.max_length)
                  for path in cfg.conversations]
    out = Path(cfg.out)
    options = {"weight_decay": cfg.weight_decay, "logging_steps": cfg.logging_steps, "report_to": "none",
               "lr_scheduler_type": cfg.lr_schedule, "adam_beta2": cfg.adam_beta2}
    if cfg.sketch.steps:
        trainer, documents, scorer = _sketch_trainer(cfg, model, tokenizer, parts, out, options)
    else:
        if cfg.repeat_fraction:
            count = round(sum(len(p) for p in parts) * cfg.repeat_fraction / (1 - cfg.repeat_fraction))
            parts.append(RepeatedWords.from_corpus(Path(cfg.corpus), tokenizer, count, cfg.seed))
        dataset = ConcatDataset(parts)
        args = training_arguments(out / "trainer", cfg.batch_size, cfg.lr, cfg.epochs, cfg.warmup_ratio, cfg.seed,
                                  **options)
        lengths = [n for part in parts for n in part.lengths]
        trainer = LengthGroupedTrainer(model=model, args=args, train_dataset=dataset, lengths=lengths,
                                       data_collator=partial(collate, pad_id=tokenizer.pad_token_id))
        documents, scorer = len(dataset), None
    start = time.time()
    result = trainer.train()
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    summary = {"documents": documents, "steps": result.global_step, "first_loss": losses[0],
               "final_loss": losses[-1], "seconds": round(time.time() - start, 1), "model": str(out / "model")}
    if scorer is not None:
        summary["held_out"] = scorer()
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _sketch_trainer(cfg: LanguageConfig, model: torch.nn.Module, tokenizer: Any, text_parts: list[Dataset],
                    out: Path, options: dict[str, Any]) -> tuple[SketchTrainer, int, Callable[[], dict[str, float]]]:
    """The trainer of sketch steps (see `mllm.train_stages.sketches`), the documents it draws from and a scorer of
    the held-out sketch questions."""
    sk, world = cfg.sketch, Path(cfg.sketch.world)
    cells = load_cells(world / "sketch" / "cells.json")
    images = sorted(cells)
    random.Random(f"held-out-{cfg.seed}").shuffle(images)
    held = set(images[: round(len(images) * sk.held_out)])
    files = {"align": (world / "stage_data" / "align.json", "plain"),
             "instruct": (world / "stage_data" / "instruct.json", "chat"),
             "existence": (world / "sketch" / "existence.json", "chat"),
             "reading": (world / "sketch" / "reading.json", "chat")}
    weights = {"existence": sk.existence_weight, "reading": sk.reading_weight}
    sets = {kind: SketchSet(path, fmt, world / "images", tokenizer, cells, held, sk.side, cfg.max_length)
            for kind, (path, fmt) in files.items() if weights.get(kind, 1.0) > 0}
    words = sorted({w for grid in cells.values() for ws in grid.values() for w in ws})
    cell_ids = dict(zip(words, tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"],
                        strict=True))
    text = ConcatDataset(text_parts) if text_parts else None
    repeats = (RepeatedWords.from_corpus(Path(cfg.corpus), tokenizer, cfg.batch_size * sk.steps, cfg.seed)
               if sk.share + sk.text_share < 1 else None)
    batches = SketchBatches(sets, cells, cell_ids, text, repeats, sk, cfg.batch_size, tokenizer.pad_token_id,
                            cfg.seed)
    args = training_arguments(out / "trainer", 1, cfg.lr, 1, cfg.warmup_ratio, cfg.seed, max_steps=sk.steps,
                              **options)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)  # load_tokenizer adds it when missing
    trainer = SketchTrainer(model=model, args=args, train_dataset=batches, data_collator=first, image_id=image_id)
    documents = sum(len(s.train) for s in sets.values()) + (len(text) if text is not None else 0)
    return trainer, documents, lambda: held_out_scores(model, batches, image_id)
