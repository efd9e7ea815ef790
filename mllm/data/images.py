"""Image preprocessing: resize or pad-to-square, ImageNet normalisation, and pretraining augmentation.

Pure Pillow + torch (no torchvision in the default install). The augmentation follows the OpenVision
release: random resized crop over 40-100% of the area, SimCLR colour jitter (brightness, contrast and
saturation by 0.8 x strength, hue by 0.2 x strength, in random order, p=0.8) and grayscale (p=0.2).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageConfig:
    """How an image becomes a tensor for the encoder."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pad_to_square: bool = False


@dataclass
class AugmentConfig:
    """Pretraining augmentation; the defaults are the OpenVision release's. Zero strengths disable a step."""

    crop_min_area: float = 0.4
    jitter_strength: float = 0.4
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2


def to_tensor(image: Image.Image, cfg: ImageConfig) -> torch.Tensor:
    """RGB image -> normalised (3, size, size) float tensor."""
    image = image.convert("RGB")
    if cfg.pad_to_square and image.width != image.height:
        side = max(image.size)
        fill = tuple(round(m * 255) for m in cfg.mean)
        canvas = Image.new("RGB", (side, side), fill)
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    if image.size != (cfg.size, cfg.size):
        image = image.resize((cfg.size, cfg.size), Image.BILINEAR)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return (array - mean) / std


def random_resized_crop(image: Image.Image, size: int, min_area: float, rng: random.Random) -> Image.Image:
    """Inception-style crop: area in [min_area, 1], aspect ratio in [3/4, 4/3], resized to `size`."""
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(min_area, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.resize((size, size), Image.BILINEAR, box=(x, y, x + w, y + h))
    return image.resize((size, size), Image.BILINEAR)


def augment(image: Image.Image, size: int, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    image = image.convert("RGB")
    if cfg.crop_min_area < 1.0:
        image = random_resized_crop(image, size, cfg.crop_min_area, rng)
    if cfg.jitter_strength > 0 and rng.random() < cfg.jitter_prob:
        s = 0.8 * cfg.jitter_strength
        ops = [lambda im, e=e: e(im).enhance(rng.uniform(1 - s, 1 + s))
               for e in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)]
        ops.append(lambda im: _shift_hue(im, rng.uniform(-0.2, 0.2) * cfg.jitter_strength))
        rng.shuffle(ops)
        for op in ops:
            image = op(image)
    if rng.random() < cfg.grayscale_prob:
        image = image.convert("L").convert("RGB")
    return image


def _shift_hue(image: Image.Image, fraction: float) -> Image.Image:
    hsv = np.array(image.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + round(fraction * 255)) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
