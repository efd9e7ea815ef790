"""Benchmark data on disk, and the chance level each benchmark's headline metric is compared with.

A benchmark lives in `DATA/<key>.parquet` or `DATA/<key>/` (a `datasets.save_to_disk` folder), with the
columns of the lmms-eval dataset it mirrors. Nothing is downloaded.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mllm.data.parquet import decode_image, read_table
from mllm.eval.answer_files import question_ids
from mllm.eval.metrics import BENCHMARKS, check_benchmark, headline, score_benchmark

LETTERS = "ABCDEFGH"


def benchmark_path(data_dir: Path, name: str) -> Path:
    check_benchmark(name)
    for candidate in (data_dir / f"{name}.parquet", data_dir / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"benchmark {name!r} not found: expected {data_dir / f'{name}.parquet'} "
                            f"or a save_to_disk folder {data_dir / name}")


def load_rows(data_dir: Path, name: str) -> list[dict[str, Any]]:
    rows = read_table(benchmark_path(Path(data_dir), name))
    if not rows:
        raise ValueError(f"benchmark {name!r} in {data_dir} has no rows")
    return rows


def first_rows(name: str, rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The first `limit` rows (0: all); for MME only whole image pairs, which its acc+ scores together."""
    head = rows[:limit] if limit else rows
    if name != "mme" or len(head) == len(rows):
        return head
    ids = question_ids(head)
    return [row for row, qid in zip(head, ids, strict=True) if ids.count(qid) == 2]


def row_image(row: Mapping[str, Any], base: Path | None = None) -> Image.Image:
    """The row's image; SEED keeps a list of images, of which image questions have one."""
    cell = row.get("image")
    if isinstance(cell, list):
        cell = cell[0] if cell else None
    if cell is None:
        raise ValueError(f"row {row.get('question_id', '?')} has no image")
    return decode_image(cell, base)


def parse_benchmarks(spec: str) -> list[str]:
    names = list(BENCHMARKS) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        check_benchmark(name)
    return names


def _options(name: str, doc: Mapping[str, Any]) -> list[str]:
    """The answers a blind guesser picks from, for benchmarks with a closed answer set."""
    if name in ("mme", "pope"):
        return ["Yes", "No"] if name == "mme" else ["yes", "no"]
    if name == "seed":
        return [letter for letter in "ABCD" if doc.get(f"choice_{letter.lower()}") is not None]
    if name == "sqa_img":
        return list(LETTERS[: len(doc["choices"])])
    return []


def chance_level(name: str, docs: Sequence[Mapping[str, Any]], draws: int = 50, seed: int = 0) -> float:
    """The headline score a model ignoring the image could reach: the better of the best constant answer
    (over every gold answer and option seen) and uniform guessing among each row's options."""
    constants: set[str] = set()
    for doc in docs:
        constants.update(_options(name, doc))
        gold = doc.get("answers", doc.get("answer"))
        if isinstance(gold, str):
            constants.add(gold)
        elif isinstance(gold, list):
            constants.update(str(g) for g in gold)
    best = max((headline(name, score_benchmark(name, docs, [c] * len(docs))) for c in sorted(constants)),
               default=0.0)
    if all(_options(name, doc) for doc in docs):
        rng = random.Random(seed)
        guesses = [headline(name, score_benchmark(name, docs, [rng.choice(_options(name, d)) for d in docs]))
                   for _ in range(draws)]
        best = max(best, sum(guesses) / draws)
    return best
