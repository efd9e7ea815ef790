"""LLaVA-format stage data: a JSON list of {"id", "image", "conversations"} plus an image folder.

Every record is checked and encoded up front. A malformed record, a wrong number of `<image>` markers, a
missing image file or a conversation that cannot be encoded is an error naming the sample id in strict
mode, and is skipped and counted otherwise (the default for training). An image that turns out to be
unreadable during training is counted and replaced by the next readable sample, never silently misaligned.

With an AnyRes layout each image's position count depends on its size, which is read from the image's
header while encoding; its tiles are then concatenated across the batch, with the sizes alongside.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mllm.data.anyres import AnyResLayout
from mllm.data.conversation import IGNORE_INDEX, ConversationError, encode_conversation
from mllm.data.images import ImageConfig, to_tensor
from mllm.llm import IMAGE_TOKEN

log = logging.getLogger(__name__)


@dataclass
class Sample:
    id: str
    image: Path | None
    input_ids: list[int]
    labels: list[int]


def load_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"stage data not found: {path}")
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"malformed JSON in {path}: {err}") from err
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of samples, found {type(records).__name__}")
    return records


def check_record(record: Any, image_folder: Path | None) -> Path | None:
    """The record's image path; raises ConversationError (naming what is wrong) for a bad record."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise ConversationError("not an object with a 'conversations' list")
    markers = sum(str(t.get("value", "")).count(IMAGE_TOKEN) for t in record["conversations"] if isinstance(t, dict))
    if "image" not in record:
        if markers:
            raise ConversationError(f"{markers} {IMAGE_TOKEN} marker(s) but no image")
        return None
    if markers != 1:
        raise ConversationError(f"{markers} {IMAGE_TOKEN} markers for one image (expected exactly 1)")
    if image_folder is None:
        raise ConversationError("has an image but the data has no image folder")
    image = image_folder / str(record["image"])
    if not image.is_file():
        raise ConversationError(f"image file not found: {image}")
    return image


class ConversationDataset(Dataset):
    """Encoded conversations with their images, ready for the collator."""

    def __init__(self, json_path: str | Path, image_folder: str | Path | None, tokenizer: PreTrainedTokenizerBase,
                 image: ImageConfig, fmt: str, num_image_tokens: int, max_length: int, strict: bool = False,
                 anyres: AnyResLayout | None = None):
        self.image_cfg, self.strict, self.anyres = image, strict, anyres
        self.skipped: Counter[str] = Counter()
        self.samples: list[Sample] = []
        path, folder = Path(json_path), None if image_folder is None else Path(image_folder)
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        for index, record in enumerate(tqdm(load_records(path), desc=f"encoding {path.name}", unit="sample")):
            sample_id = str(record.get("id", f"#{index}")) if isinstance(record, dict) else f"#{index}"
            try:
                image_path = check_record(record, folder)
                count = num_image_tokens
                if anyres is not None and image_path is not None:
                    count = _anyres_tokens(anyres, image_path)
                ids, labels = encode_conversation(tokenizer, record["conversations"], fmt, count, max_length)
            except ConversationError as err:
                self._skip(f"{path}: sample {sample_id}", str(err))
                continue
            self.samples.append(Sample(sample_id, image_path, ids, labels))
        if not self.samples:
            raise ValueError(f"no usable samples in {path} ({dict(self.skipped)} skipped)")
        if self.skipped:
            log.warning("%s: skipped %d bad samples: %s", path, sum(self.skipped.values()), dict(self.skipped))

    def _pixels(self, image: Image.Image) -> dict[str, torch.Tensor]:
        if self.anyres is None:
            return {"pixel_values": to_tensor(image, self.image_cfg)}
        return {"pixel_values": self.anyres.tiles(image, self.image_cfg),
                "image_size": torch.tensor([image.height, image.width])}

    def _skip(self, where: str, reason: str) -> None:
        if self.strict:
            raise ValueError(f"{where}: {reason}")
        self.skipped[reason.split(":")[0]] += 1
        if sum(self.skipped.values()) <= 5:
            log.warning("skipping %s: %s", where, reason)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_image(self) -> list[bool]:
        return [sample.image is not None for sample in self.samples]

    @property
    def lengths(self) -> list[int]:
        return [len(sample.input_ids) for sample in self.samples]

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.samples)):
            sample = self.samples[(index + offset) % len(self.samples)]
            pixels: dict[str, torch.Tensor | None] = {"pixel_values": None}
            if sample.image is not None:
                try:
                    with Image.open(sample.image) as img:
                        pixels = self._pixels(img)
                except (OSError, UnidentifiedImageError) as err:
                    self._skip(f"sample {sample.id}", f"unreadable image {sample.image}: {err}")
                    continue
            return {"input_ids": torch.tensor(sample.input_ids), "labels": torch.tensor(sample.labels), **pixels}
        raise RuntimeError("no readable sample left in the dataset")


def _anyres_tokens(anyres: AnyResLayout, image: Path) -> int:
    """An image's AnyRes position count from its size; opening reads only the header."""
    try:
        with Image.open(image) as img:
            return anyres.num_image_tokens(img.width, img.height)
    except (OSError, UnidentifiedImageError) as err:
        raise ConversationError(f"unreadable image {image}: {err}") from err


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ids and labels; stack the images of the samples that have one, in batch order
    (no `pixel_values` key when none has, so text-only batches also suit a plain causal LM). AnyRes
    samples' tiles are concatenated instead, with `image_sizes` (height, width) per image."""
    length = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = item["input_ids"], item["labels"], 1
    images = [item["pixel_values"] for item in batch if item.get("pixel_values") is not None]
    out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    sizes = [item["image_size"] for item in batch if item.get("image_size") is not None]
    if images:
        out["pixel_values"] = torch.cat(images) if sizes else torch.stack(images)
    if sizes:
        out["image_sizes"] = torch.stack(sizes)
    return out
