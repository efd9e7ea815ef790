"""`mllm world`: write the synthetic world, deterministically for a seed.

Layout of the output folder:
    shards/pretrain-NNNNN.tar   webdataset shards as img2dataset writes ReCap-DataComp-1B
                                (KEY.jpg, KEY.txt = dense caption, KEY.json with org_caption)
    images/train/KEY.jpg        the same training images, for the LLaVA-format stage data
    stage_data/align.json       caption-style conversations (alignment stage)
    stage_data/instruct.json    instruction mix over the eight question families
    benchmarks/KEY.parquet      eight held-out mini-benchmarks in lmms-eval column layouts
    text/corpus.txt             the world's prose (captions, alt-text), one document a line, and
    text/reading.json           the instruction conversations with the dense caption in place of the
                                image (text only): both warm up a language model from scratch
    sketch/                     scene sketches and one-turn questions about them (`mllm.world.sketches`)
    tokenizer/                  byte-level BPE with a ChatML template (AutoTokenizer-loadable)
    world.json                  manifest: seed, scale, counts, held-out combinations
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mllm.data.parquet import encode_image, write_table
from mllm.eval.metrics import BENCHMARKS
from mllm.eval.prompts import build_prompt
from mllm.world import language
from mllm.world.render import check_variation, render
from mllm.world.scene import SHAPES, Holdout, Scene, sample_scene
from mllm.world.sketches import write_sketch_data
from mllm.world.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

SCALES: dict[str, dict[str, int]] = {
    "tiny": {"train_images": 240, "benchmark_rows": 24},  # for tests
    "small": {"train_images": 4000, "benchmark_rows": 160},
    "medium": {"train_images": 20000, "benchmark_rows": 400},
}
KIND_MIX = (("objects", 0.5), ("sign", 0.25), ("chart", 0.25))
POPE_CATEGORIES = ("adversarial", "popular", "random")


@dataclass
class WorldConfig:
    """Options of `mllm world`."""

    out: str = "runs/world"
    seed: int = 0
    scale: str = "small"
    image_size: int = 96  # a 3x3 grid of 32-pixel cells: each cell is one patch of a /32 ViT
    shard_size: int = 500
    jpeg_quality: int = 95
    # Share of training images that also get a standalone "Describe the image in detail." conversation in the
    # instruction mix (LLaVA's mix has such records too): dense supervision that grounds every object.
    describe_prob: float = 0.5
    # How far pictures depart from the grid's regularity (see `render`): 0 keeps every object centred in its
    # patch, where a random tower's patch features are already near-exact.
    variation: float = 0.0


def _jpeg(image: Any, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _kind(rng: random.Random) -> str:
    return rng.choices([k for k, _ in KIND_MIX], weights=[w for _, w in KIND_MIX])[0]


DESCRIBE = "Describe the image in detail."
PAIRED_FAMILIES = ("mme", "pope")


def _conversations(key: str, scene: Scene, rng: random.Random, popular: list[str]) -> list[dict[str, Any]]:
    """A multi-turn LLaVA-format conversation mixing the question families that fit the scene, and a one-turn
    record for the second question of each yes/no pair (MME, POPE: one "yes", one "no" about the image). In
    one conversation the pair's second answer is the opposite of the first, which a model learns to read off
    the text instead of the image."""
    turns: list[tuple[str, str]] = []
    partners: list[tuple[str, str]] = []
    families = [f for f, kinds in language.FAMILY_KINDS.items() if scene.kind in kinds]
    for family in rng.sample(families, min(len(families), rng.randint(2, 3))):
        docs = _family_docs(family, scene, rng, popular)
        # A random subset, not a prefix: yes/no families list the "yes" question first, and a prefix
        # would tilt the mix two to one towards "yes".
        docs = rng.sample(docs, rng.randint(1, len(docs))) if docs else []
        asked = [(build_prompt(family, doc), language.training_answer(family, doc)) for doc in docs]
        if family in PAIRED_FAMILIES:
            partners += asked[1:]
            asked = asked[:1]
        turns += asked
    rng.shuffle(turns)
    records = [language.record(key, turns or [(DESCRIBE, language.dense_caption(scene))])]
    return records + [language.record(key, [turn], suffix=f"-pair{i}") for i, turn in enumerate(partners)]


def _as_reading(record: dict[str, Any], caption: str) -> dict[str, Any]:
    """The conversation as reading comprehension: the caption stands where the image was."""
    turns = [dict(t) for t in record["conversations"]]
    pairs = [(q, a) for q, a in zip(turns[::2], turns[1::2], strict=True) if a["value"] != caption]
    turns = [t for pair in pairs for t in pair]
    turns[0]["value"] = caption + "\n" + turns[0]["value"].replace("<image>\n", "")
    return {"id": record["id"], "conversations": turns}


def _family_docs(family: str, scene: Scene, rng: random.Random, popular: list[str]) -> list[dict[str, Any]]:
    if family == "pope":
        return language.pope(scene, rng, rng.choice(POPE_CATEGORIES), popular)
    return getattr(language, family)(scene, rng)


def _popular_shapes(scenes: list[Scene], k: int = 3) -> list[str]:
    counts = {s: 0 for s in SHAPES}
    for scene in scenes:
        for shape in scene.shapes:
            counts[shape.shape] += 1
    return sorted(SHAPES, key=lambda s: (-counts[s], s))[:k]


def _write_training(cfg: WorldConfig, out: Path, holdout: Holdout) -> tuple[list[str], list[str]]:
    """Training images, shards and stage data; returns the texts written and the popular shapes."""
    rng = random.Random(f"train-{cfg.seed}")
    n = SCALES[cfg.scale]["train_images"]
    scenes = [sample_scene(rng, _kind(rng), holdout, held_out=False) for _ in range(n)]
    popular = _popular_shapes(scenes)
    (out / "images" / "train").mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    prose: list[str] = []
    align, instruct, reading = [], [], []
    tar: tarfile.TarFile | None = None
    for i, scene in enumerate(tqdm(scenes, desc="world: training images", unit="img")):
        key = f"{i:06d}"
        jpg = _jpeg(render(scene, cfg.image_size, rng, cfg.variation), cfg.jpeg_quality)
        (out / "images" / "train" / f"{key}.jpg").write_bytes(jpg)
        dense, alt = language.dense_caption(scene), language.alt_text(scene)
        if i % cfg.shard_size == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(out / "shards" / f"pretrain-{i // cfg.shard_size:05d}.tar", "w")
        meta = json.dumps({"key": key, "org_caption": alt, "re_caption": dense}).encode()
        for suffix, payload in (("jpg", jpg), ("txt", dense.encode()), ("json", meta)):
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime = len(payload), 0
            tar.addfile(info, io.BytesIO(payload))
        align.append(language.record(key, [("Describe the image.", dense)]))
        conversations = _conversations(key, scene, rng, popular)
        instruct += conversations
        reading += [_as_reading(c, dense) for c in conversations
                    if any(t["value"] != dense for t in c["conversations"][1::2])]
        if rng.random() < cfg.describe_prob:
            instruct.append(language.record(key, [(DESCRIBE, dense)], suffix="-describe"))
        prose += [dense, alt]
        texts += [dense, alt] + [turn["value"] for c in conversations for turn in c["conversations"]]
    if tar is not None:
        tar.close()
    (out / "stage_data").mkdir(exist_ok=True)
    for name, records in (("align", align), ("instruct", instruct)):
        (out / "stage_data" / f"{name}.json").write_text(json.dumps(records, indent=1))
    (out / "text").mkdir(exist_ok=True)
    (out / "text" / "corpus.txt").write_text("\n".join(prose) + "\n")
    (out / "text" / "reading.json").write_text(json.dumps(reading, indent=1))
    write_sketch_data(out, [(f"{i:06d}", scene) for i, scene in enumerate(scenes)], popular, cfg.seed,
                      POPE_CATEGORIES)
    return texts, popular


def _benchmark_rows(family: str, cfg: WorldConfig, holdout: Holdout, popular: list[str]) -> list[dict]:
    rng = random.Random(f"bench-{family}-{cfg.seed}")
    target = SCALES[cfg.scale]["benchmark_rows"]
    rows: list[dict[str, Any]] = []
    placed: Counter[int] = Counter()
    image_index = 0
    while len(rows) < target:
        kind = rng.choice(language.FAMILY_KINDS[family])
        scene = sample_scene(rng, kind, holdout, held_out=True)
        if family == "pope":
            docs = language.pope(scene, rng, POPE_CATEGORIES[image_index % 3], popular)
        else:
            docs = getattr(language, family)(scene, rng)
        if not docs:
            continue
        image = encode_image(render(scene, cfg.image_size, rng, cfg.variation), cfg.jpeg_quality)
        name = f"{family}_{image_index:05d}"
        for j, doc in enumerate(docs):
            doc = _place_answer(family, doc, placed)
            rows.append(_with_layout(family, doc, image, name, len(rows), j))
        image_index += 1
    return rows


def _place_answer(family: str, doc: dict[str, Any], placed: Counter[int]) -> dict[str, Any]:
    """A multiple-choice row with its options rotated so that, over the benchmark, the right option takes each
    position in turn (counted per number of options in `placed`). Left to chance, 160 rows put 55 SEED
    answers on one letter, and "always C" would set the bar at 34% instead of 25%."""
    if family == "seed":
        options, right = [doc[f"choice_{c.lower()}"] for c in language.LETTERS], language.LETTERS.index(doc["answer"])
    elif family == "sqa_img":
        options, right = list(doc["choices"]), doc["answer"]
    else:
        return doc
    k = len(options)
    target = placed[k] % k
    placed[k] += 1
    rotated = [options[(i - target + right) % k] for i in range(k)]
    if family == "seed":
        return {**doc, "answer": language.LETTERS[target],
                **{f"choice_{c.lower()}": o for c, o in zip(language.LETTERS, rotated, strict=True)}}
    return {**doc, "choices": rotated, "answer": target}


def _with_layout(family: str, doc: dict, image: dict, name: str, index: int, j: int) -> dict[str, Any]:
    """Add the id and image columns of the lmms-eval dataset of `family`."""
    row = dict(doc)
    if family == "textvqa":
        row = {"question_id": index, **row}
    elif family == "mme":
        row = {"question_id": f"{doc['category']}/{name}.jpg", **row}
    elif family in ("seed", "pope"):
        row = {"question_id": f"{name}_{j}", **row}
    elif family == "gqa":
        row = {"question_id": f"{name}_{j}", **row, "imageId": name}
    row["image"] = [image] if family == "seed" else image
    return row


def build_world(cfg: WorldConfig) -> dict[str, Any]:
    """Write the world described by `cfg`; returns the manifest also saved as world.json."""
    if cfg.scale not in SCALES:
        raise ValueError(f"unknown scale {cfg.scale!r}; expected one of {sorted(SCALES)}")
    check_variation(cfg.variation)  # before anything is written
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    holdout = Holdout.sample(cfg.seed)
    texts, popular = _write_training(cfg, out, holdout)
    counts = {}
    for family in tqdm(BENCHMARKS, desc="world: benchmarks", unit="bench"):
        rows = _benchmark_rows(family, cfg, holdout, popular)
        write_table(rows, out / "benchmarks" / f"{family}.parquet")
        counts[family] = len(rows)
    train_tokenizer(texts, out / "tokenizer")
    manifest = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "out"},
        "train_images": SCALES[cfg.scale]["train_images"],
        "benchmark_rows": counts,
        "popular_shapes": popular,
        "holdout": {name: sorted(map(list, getattr(holdout, name)))
                    for name in ("shape_colour", "word_colour", "bar_value")},
    }
    (out / "world.json").write_text(json.dumps(manifest, indent=1))
    return manifest
