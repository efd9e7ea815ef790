"""Image-caption pretraining data from webdataset tar shards (the layout img2dataset writes).

The caption comes from a configurable field: `txt` (the shard's text file), or `json:<key>` for a key of
the sample's JSON (ReCap-DataComp-1B keeps `org_caption` there). Unreadable samples are skipped and
counted, with the shard and key of the first few logged; strict mode raises instead.

Objectives with a contrastive text tower (OpenVision, `ov1`) also get, per sample, the web alt-text (from
`web_caption_field`, ReCap-DataComp-1B's `org_caption`) and one random sentence of the caption, each as a
fixed-length row for the text encoder.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from mllm.data.images import AugmentConfig, ImageConfig, augment, to_tensor

log = logging.getLogger(__name__)


@dataclass
class ShardConfig:
    """Where pretraining samples come from and how they are read."""

    shards: str = "runs/world/shards"  # folder of .tar, glob, brace pattern ({00000..00099}) or URL
    caption_field: str = "txt"  # "txt" or "json:<key>", e.g. "json:org_caption"
    web_caption_field: str = "json:org_caption"  # the alt-text; read only by objectives with a text encoder
    shuffle_buffer: int = 1000
    strict: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def resolve_shards(spec: str) -> list[str]:
    """Expand a shard spec into URLs; local paths must exist (the error names the missing one)."""
    if "://" in spec or spec.startswith("pipe:"):
        return list(wds.shardlists.expand_urls(spec))
    path = Path(spec)
    if path.is_dir():
        found = sorted(str(p) for p in path.glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"no .tar shards in folder {spec}")
        return found
    found = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else list(wds.shardlists.expand_urls(spec))
    missing = [s for s in found if not Path(s).exists()]
    if not found or missing:
        raise FileNotFoundError(f"shard not found: {missing[0] if missing else spec}")
    return found


class BadSamples:
    """Counts skipped samples by reason; logs the first few with where they came from."""

    def __init__(self, strict: bool, log_first: int = 5) -> None:
        self.strict, self.log_first = strict, log_first
        self.counts: Counter[str] = Counter()

    def __call__(self, where: str, reason: str) -> None:
        if self.strict:
            raise ValueError(f"bad sample {where}: {reason}")
        self.counts[reason.split(":")[0]] += 1
        if sum(self.counts.values()) <= self.log_first:
            log.warning("skipping bad sample %s: %s", where, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def read_caption(sample: dict[str, Any], caption_field: str) -> str:
    if caption_field == "txt":
        raw = sample.get("txt")
        if raw is None:
            raise KeyError("missing .txt")
        return raw.decode("utf-8").strip()
    if caption_field.startswith("json:"):
        if "json" not in sample:
            raise KeyError("missing .json")
        key = caption_field.split(":", 1)[1]
        value = json.loads(sample["json"]).get(key)
        if not isinstance(value, str):
            raise KeyError(f"json has no string {key!r}")
        return value.strip()
    raise ValueError(f"caption_field must be 'txt' or 'json:<key>', got {caption_field!r}")


def random_sentence(caption: str, rng: random.Random) -> str:
    """One sentence of `caption` drawn uniformly, split at . ! and ? like the release's sub-captions."""
    sentences = [part.strip() for part in re.split(r"[.!?]", caption) if part.strip()]
    return rng.choice(sentences) if sentences else caption


class CaptionShards(IterableDataset):
    """Stream of {"pixel_values", "caption_ids"}: endless reshuffled epochs in training, one pass otherwise.

    With `text_tokenize`, samples also carry `web_ids` (the web caption) and `sentence_ids` (a random
    sentence of the caption, drawn anew each time the sample is read).
    """

    def __init__(
        self,
        cfg: ShardConfig,
        image: ImageConfig,
        tokenize: Callable[[str], torch.Tensor],
        seed: int = 0,
        train: bool = True,
        text_tokenize: Callable[[str], torch.Tensor] | None = None,
    ) -> None:
        self.cfg, self.image, self.tokenize, self.seed, self.train = cfg, image, tokenize, seed, train
        self.text_tokenize = text_tokenize
        self.urls = resolve_shards(cfg.shards)
        self.bad = BadSamples(cfg.strict)

    def _on_tar_error(self, err: Exception) -> bool:
        self.bad("(tar stream)", f"unreadable shard data: {err}")
        return True

    def _decode(self, sample: dict[str, Any], rng: random.Random) -> dict[str, torch.Tensor] | None:
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            raw = sample.get("jpg") or sample.get("jpeg") or sample.get("png") or sample.get("webp")
            if raw is None:
                raise KeyError("missing image")
            image = Image.open(io.BytesIO(raw))
            image.load()
            caption = read_caption(sample, self.cfg.caption_field)
            if not caption:
                raise ValueError("empty caption")
            web_caption = None
            if self.text_tokenize is not None:
                web_caption = read_caption(sample, self.cfg.web_caption_field)
                if not web_caption:
                    raise ValueError("empty web caption")
        except Exception as err:  # any decode failure is a bad sample, never a crash of the stream
            self.bad(where, f"{type(err).__name__}: {err}")
            return None
        if self.train:
            image = augment(image, self.image.size, self.cfg.augment, rng)
        item = {"pixel_values": to_tensor(image, self.image), "caption_ids": self.tokenize(caption)}
        if self.text_tokenize is not None and web_caption is not None:
            item["web_ids"] = self.text_tokenize(web_caption)
            item["sentence_ids"] = self.text_tokenize(random_sentence(caption, rng))
        return item

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        rng = random.Random(f"{self.seed}-{worker.id if worker else 0}")
        epoch = 0
        while True:
            stream = wds.WebDataset(
                self.urls, handler=self._on_tar_error, shardshuffle=len(self.urls) if self.train else False,
                empty_check=False, seed=self.seed + epoch, nodesplitter=wds.split_by_node,
            )
            if self.train and self.cfg.shuffle_buffer > 1:
                stream = stream.shuffle(self.cfg.shuffle_buffer, rng=rng)
            for sample in stream:
                item = self._decode(sample, rng)
                if item is not None:
                    yield item
            if not self.train:
                return
            epoch += 1
