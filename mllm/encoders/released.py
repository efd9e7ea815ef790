"""Released OpenVision / OpenVision 2 checkpoints in open_clip format, read from a local folder.

A release folder holds `open_clip_config.json` (`model_cfg.vision_cfg` describes the ViT, `preprocess_cfg`
the normalisation) and the weights as `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`, keyed
`visual.*` for the vision tower next to text-tower keys. Only the vision tower is read; its sizes must match
one of `VIT_VARIANTS` because our ViT is built from a variant name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from mllm.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageConfig
from mllm.encoders.vit import VIT_VARIANTS, VisionTransformer, ViTConfig, load_open_clip_state_dict

logger = logging.getLogger(__name__)

OPEN_CLIP_CONFIG = "open_clip_config.json"
SAFETENSORS_WEIGHTS = "open_clip_model.safetensors"
PICKLE_WEIGHTS = "open_clip_pytorch_model.bin"

# open_clip's CLIPVisionCfg defaults for the fields a release may leave out.
_DEFAULT_HEAD_WIDTH = 64
_DEFAULT_MLP_RATIO = 4.0
# OpenVision trains its ViT with flax's LayerNorm epsilon.
_OPENVISION_LN_EPS = 1e-6


def is_released_folder(folder: Path) -> bool:
    """A release folder has open_clip's config and none of our exported `config.json`."""
    return (folder / OPEN_CLIP_CONFIG).is_file() and not (folder / "config.json").is_file()


def read_released_config(folder: Path) -> tuple[ViTConfig, ImageConfig]:
    """The ViT architecture and preprocessing described by a release folder's open_clip_config.json."""
    file = folder / OPEN_CLIP_CONFIG
    try:
        raw = json.loads(file.read_text())
        model_cfg = raw.get("model_cfg", raw)
        vision = model_cfg["vision_cfg"]
        width, depth = int(vision["width"]), int(vision["layers"])
        mlp_dim = int(width * float(vision.get("mlp_ratio", _DEFAULT_MLP_RATIO)))
        heads = width // int(vision.get("head_width", _DEFAULT_HEAD_WIDTH))
        patch_size = _side(vision["patch_size"], "patch_size")
        image_size = _side(vision["image_size"], "image_size")
        ln_eps = float((vision.get("norm_kwargs") or {}).get("eps", _OPENVISION_LN_EPS))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed open_clip config {file}: {err!r}") from err
    if not vision.get("no_ln_pre", True):
        raise ValueError(f"{file}: the vision tower has ln_pre (no_ln_pre is false); OpenVision ViTs have none")

    sizes = (width, depth, mlp_dim, heads)
    variant = next((name for name, known in VIT_VARIANTS.items() if known == sizes), None)
    if variant is None:
        known = ", ".join(f"{name} {w}/{d}/{m}/{h}" for name, (w, d, m, h) in VIT_VARIANTS.items())
        raise ValueError(f"{folder}: vision tower width/layers/mlp/heads {width}/{depth}/{mlp_dim}/{heads} "
                         f"match no known ViT variant ({known})")

    preprocess = raw.get("preprocess_cfg") or {}
    if "mean" not in preprocess or "std" not in preprocess:
        # OpenVision normalises with ImageNet statistics; open_clip's OpenAI default would be wrong here.
        logger.warning("%s has no preprocess_cfg mean/std; using ImageNet mean/std as OpenVision trains", file)
    image = ImageConfig(size=image_size, mean=tuple(preprocess.get("mean", IMAGENET_MEAN)),
                        std=tuple(preprocess.get("std", IMAGENET_STD)))
    config = ViTConfig(variant=variant, patch_size=patch_size, image_size=image_size, ln_eps=ln_eps)
    return config, image


def load_released_weights(vit: VisionTransformer, folder: Path) -> None:
    """Load a release folder's vision tower into `vit`; a mismatch names the folder and every bad key."""
    try:
        load_open_clip_state_dict(vit, read_released_vision_weights(folder))
    except ValueError as err:
        raise ValueError(f"{folder}: {err}") from err


def read_released_vision_weights(folder: Path) -> dict[str, Tensor]:
    """The release's vision-tower tensors with the `visual.` prefix stripped, `proj` left out.

    `proj` maps only the pooled feature to the contrastive space; a tower reads hidden states, and leaving it
    out keeps the tower's architecture exactly what its ViTConfig describes.
    """
    safetensors_file, pickle_file = folder / SAFETENSORS_WEIGHTS, folder / PICKLE_WEIGHTS
    if safetensors_file.is_file():
        state_dict: Mapping[str, Any] = load_file(str(safetensors_file))
    elif pickle_file.is_file():
        state_dict = torch.load(pickle_file, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"released encoder weights not found in {folder}: "
                                f"expected {SAFETENSORS_WEIGHTS} or {PICKLE_WEIGHTS}")
    vision = {key.removeprefix("visual."): value for key, value in state_dict.items()
              if key.startswith("visual.") and key != "visual.proj"}
    if not vision:
        raise ValueError(f"no 'visual.*' weights in {folder}; is it an open_clip checkpoint?")
    return vision


def _side(value: Any, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{what} must be square, got {value}")
        value = value[0]
    return int(value)
