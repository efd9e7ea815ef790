"""Image-caption pretraining data: a stream over webdataset tar shards, parquet tables or JSONL + images.

The sources and the caption field (`txt`, `json:org_caption`, ...) are described in `mllm.data.sources`,
the split between ranks and DataLoader workers and the resume arithmetic in `mllm.data.splitting`.
Unreadable samples are skipped and counted, the first few logged with their file and key; strict mode
raises instead.

Objectives with a contrastive text tower (OpenVision, `ov1`) also get, per sample, the web alt-text (from
`web_caption_field`, ReCap-DataComp-1B's `org_caption`) and one random sentence of the caption, each as a
fixed-length row for the text encoder.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from mllm.data.images import AugmentConfig, ImageConfig, augment, to_tensor
from mllm.data.sources import (
    IMAGE_FIELDS,
    KEY_FIELDS,
    KINDS,
    Record,
    SampleError,
    caption_columns,
    read_caption,
    read_image,
    reader,
    resolve_shards,
)
from mllm.data.splitting import Reader, distributed_rank, epoch_share, process_group_rank, resume_role

log = logging.getLogger(__name__)


@dataclass
class ShardConfig:
    """Where pretraining samples come from and how they are read."""

    shards: str = "runs/world/shards"  # file, folder, glob, brace pattern ({00000..00099}) or fsspec URL
    format: Literal["webdataset", "parquet", "jsonl"] = "webdataset"
    caption_field: str = "txt"  # a field ("txt"; a table column) or "json:<key>", e.g. "json:org_caption"
    web_caption_field: str = "json:org_caption"  # the alt-text; read only by objectives with a text encoder
    image_field: str = ""  # "" = the first of jpg, jpeg, png, webp, image the sample has
    image_root: str = ""  # parquet / JSONL: where relative image paths point ("" = the table's folder)
    shuffle_buffer: int = 1000
    strict: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


class BadSampleError(ValueError):
    """A bad sample met in strict mode; the message names its file and key."""


class BadSamples:
    """Counts skipped samples by kind; logs the first few in full with where they came from, then counts.

    The counts live in shared memory, one row per DataLoader worker, so the main process sees its workers'.
    """

    slots = 64  # workers beyond this share rows, and may then lose a count when two skip at once

    def __init__(self, strict: bool, log_first: int = 5) -> None:
        self.strict, self.log_first = strict, log_first
        self._counts = torch.zeros(self.slots, len(KINDS), dtype=torch.int64).share_memory_()
        self.slot = 0  # this process's row: its DataLoader worker id
        self._seen = 0  # in this process, for the logging schedule

    def __call__(self, where: str, kind: str, detail: str) -> None:
        if self.strict:
            raise BadSampleError(f"bad sample {where}: {kind}: {detail}")
        self._counts[self.slot % self.slots, KINDS.index(kind)] += 1
        self._seen += 1
        if self._seen <= self.log_first:
            log.warning("skipping bad sample %s: %s: %s", where, kind, detail)
        elif _is_power_of_ten(self._seen):
            log.warning("skipped %d bad samples in this reader so far; all readers: %s", self._seen, self.counts)

    @property
    def counts(self) -> dict[str, int]:
        totals = self._counts.sum(0).tolist()
        return {kind: n for kind, n in zip(KINDS, totals, strict=True) if n}

    @property
    def total(self) -> int:
        return int(self._counts.sum())


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


def random_sentence(caption: str, rng: random.Random) -> str:
    """One sentence of `caption` drawn uniformly, split at . ! and ? like the release's sub-captions."""
    sentences = [part.strip() for part in re.split(r"[.!?]", caption) if part.strip()]
    return rng.choice(sentences) if sentences else caption


def shuffled(records: Iterator[Record], size: int, rng: random.Random) -> Iterator[Record]:
    """Shuffle through a buffer of `size`: each record swaps with a random buffered one; drain at the end."""
    buffer: list[Record] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = record
    rng.shuffle(buffer)
    yield from buffer


class CaptionShards(IterableDataset):
    """Stream of {"pixel_values", "caption_ids"}: endless reshuffled epochs in training, one pass otherwise.

    With `text_tokenize`, samples also carry `web_ids` (the web caption) and `sentence_ids` (a random
    sentence of the caption). Augmentation and the sentence draw are seeded by the seed, the epoch and the
    sample, so a sample's item does not depend on which reader reads it.

    Ranks and workers: the rank and world size come from torch.distributed when it is initialised at
    construction (or from `rank` and `world_size`, which override it), the worker from the DataLoader; each
    (rank, worker) pair reads a disjoint share (`mllm.data.splitting`). Resume with `skip`.
    """

    def __init__(
        self,
        cfg: ShardConfig,
        image: ImageConfig,
        tokenize: Callable[[str], torch.Tensor],
        seed: int = 0,
        train: bool = True,
        text_tokenize: Callable[[str], torch.Tensor] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.cfg, self.image, self.tokenize, self.seed, self.train = cfg, image, tokenize, seed, train
        self.text_tokenize = text_tokenize
        self.rank, self.world_size = distributed_rank(rank, world_size)
        self._from_dist = rank is None
        columns = caption_columns(cfg.caption_field) | {cfg.image_field or name for name in IMAGE_FIELDS}
        if text_tokenize is not None:
            columns |= caption_columns(cfg.web_caption_field)
        self._read = reader(cfg.format, columns | set(KEY_FIELDS))
        self.urls = resolve_shards(cfg.shards, cfg.format)
        self.bad = BadSamples(cfg.strict)
        self._skip, self._skip_batch = 0, 1

    def skip(self, samples: int, batch_size: int = 1) -> CaptionShards:
        """Resume after this rank has taken `samples` samples (steps x batch_size) from a DataLoader over
        this dataset with batch size `batch_size`; returns self. Call before iterating.

        The stream then continues exactly where the interrupted one was, provided the world size, the
        DataLoader's `num_workers` and `batch_size`, the seed and the data are the same. Skipped samples are
        read and their images decoded (that is how a bad one is told apart), but neither augmented nor
        tokenised.
        """
        if samples < 0 or batch_size < 1 or samples % batch_size:
            raise ValueError(f"skip needs a whole number of batches; got {samples} samples of batch {batch_size}")
        self._skip, self._skip_batch = samples, batch_size
        return self

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Built before init_process_group, every rank would read the whole data as rank 0 of 1. (Workers
        # started by spawn or forkserver have no process group, and nothing to compare.)
        now = process_group_rank() if self._from_dist else None
        if now is not None and now != (self.rank, self.world_size):
            raise RuntimeError(f"CaptionShards built as rank {self.rank} of {self.world_size}, iterated as rank "
                               f"{now[0]} of {now[1]}: build it after init_process_group")
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.bad.slot = worker
        role, to_skip = resume_role(self._skip, self._skip_batch, worker, workers)
        me = Reader(self.rank, self.world_size, role, workers)
        epoch = 0
        while True:
            good = 0
            for record in self._records(epoch, me):
                sample = self._check(record)
                if sample is None:
                    continue
                good += 1
                if to_skip:
                    to_skip -= 1
                    continue
                yield self._item(*sample, random.Random(f"{self.seed}:{epoch}:{record.where}"))
            if not self.train:
                return
            if not good:  # an endless loop otherwise
                raise ValueError(f"{me} found no usable sample in an epoch of {len(self.urls)} {self.cfg.format} "
                                 f"file(s) from {self.cfg.shards} (fewer samples than ranks x workers?)")
            epoch += 1

    def _records(self, epoch: int, me: Reader) -> Iterator[Record]:
        files, stride = epoch_share(self.urls, epoch, self.seed, self.train, me)
        records = chain.from_iterable(self._read(url) for url in files)
        if stride > 1:
            records = (r for i, r in enumerate(records) if i % stride == me.index)
        if self.train and self.cfg.shuffle_buffer > 1:
            records = shuffled(records, self.cfg.shuffle_buffer, random.Random(f"{self.seed}:{epoch}:{me.index}"))
        return records

    def _check(self, record: Record) -> tuple[Image.Image, str, str | None] | None:
        """The decoded image and captions, or None (counted) for a bad sample."""
        try:
            if record.error is not None:
                raise record.error
            root = self.cfg.image_root or record.url.rpartition("/")[0]
            image = read_image(record.fields, self.cfg.image_field, root)
            caption = read_caption(record.fields, self.cfg.caption_field)
            web = None if self.text_tokenize is None else read_caption(record.fields, self.cfg.web_caption_field)
        except SampleError as err:
            self.bad(record.where, err.kind, err.detail)
            return None
        return image, caption, web

    def _item(self, image: Image.Image, caption: str, web: str | None, rng: random.Random) -> dict[str, torch.Tensor]:
        if self.train:
            image = augment(image, self.image.size, self.cfg.augment, rng)
        item = {"pixel_values": to_tensor(image, self.image), "caption_ids": self.tokenize(caption)}
        if self.text_tokenize is not None and web is not None:
            item["web_ids"] = self.text_tokenize(web)
            item["sentence_ids"] = self.text_tokenize(random_sentence(caption, rng))
        return item
