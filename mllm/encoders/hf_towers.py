"""CLIP and SigLIP vision towers: transformers' vision models loaded from a local folder.

The folder is what `save_pretrained` writes for a `CLIPVisionModel` / `SiglipVisionModel`, or for the full
two-tower `CLIPModel` / `SiglipModel` (its vision half is taken, the text half ignored). Weights are read from
safetensors only and no remote code runs. Preprocessing comes from the folder's `preprocessor_config.json` when
there is one, else from the model's image size and the family's standard normalisation.

A VLM folder stores the vision config in the tower spec, so it rebuilds without the original folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.utils.constants import (
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

from mllm.data.images import ImageConfig
from mllm.encoders.tower import ENCODERS, EncoderConfig, VisionTower

logger = logging.getLogger(__name__)

PREPROCESSOR_FILE = "preprocessor_config.json"


class HFVisionTower(VisionTower):
    """Shared body of the transformers-backed towers; subclasses name the family and its classes."""

    family: ClassVar[str]
    config_class: ClassVar[type[PretrainedConfig]]
    model_class: ClassVar[type[PreTrainedModel]]
    default_mean: ClassVar[tuple[float, float, float]]
    default_std: ClassVar[tuple[float, float, float]]
    has_class_token: ClassVar[bool]

    def __init__(self, model: PreTrainedModel, image: ImageConfig, feature_layer: int = -2,
                 use_cls: bool = False) -> None:
        super().__init__()
        if use_cls and not self.has_class_token:
            raise ValueError(f"use_cls=True, but {self.family} vision models have no class token")
        depth = model.config.num_hidden_layers
        # hidden_states holds the embeddings and then every layer's output: depth + 1 entries.
        if not -depth - 1 <= feature_layer <= depth:
            raise ValueError(f"feature_layer {feature_layer} out of range for a {depth}-layer {self.family} encoder")
        model_size = _square_size(model.config.image_size, "image_size")
        if image.size != model_size:
            raise ValueError(f"preprocessing size {image.size} differs from the {self.family} model's image_size "
                             f"{model_size}; the position embeddings only fit the latter")
        self.model, self.image = model, image
        self.feature_layer, self.use_cls = feature_layer, use_cls

    @classmethod
    def from_config(cls, cfg: EncoderConfig) -> HFVisionTower:
        if cfg.path is None:
            raise ValueError(f"encoder.path must name a local {cls.family} model folder")
        folder = Path(cfg.path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{cls.family} model config not found: {folder / 'config.json'}")
        # The config class pulls `vision_config` out of a full two-tower config by itself.
        vision_config = cls.config_class.from_pretrained(folder, local_files_only=True)
        if cfg.random_init:
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed)
                model = cls.model_class(vision_config)
        else:
            model = cls._load_weights(folder, vision_config)
        image = cls._read_image_config(folder, vision_config)
        if cfg.image_size is not None and cfg.image_size != image.size:
            raise ValueError(f"encoder.image_size {cfg.image_size}: a {cls.family} tower's learned position "
                             f"embeddings fit only its own size, {image.size}")
        return cls(model, image, cfg.feature_layer, cfg.use_cls)

    @classmethod
    def _load_weights(cls, folder: Path, vision_config: PretrainedConfig) -> PreTrainedModel:
        model, info = cls.model_class.from_pretrained(
            folder, config=vision_config, dtype=torch.float32, use_safetensors=True, local_files_only=True,
            output_loading_info=True,
        )
        # transformers would silently leave absent weights at their random init; a tower must not.
        problems = [f"{kind}: {', '.join(sorted(map(str, info[kind])))}"
                    for kind in ("missing_keys", "mismatched_keys") if info[kind]]
        if problems:
            raise ValueError(f"{cls.family} weights in {folder} do not fit the vision model | " + " | ".join(problems))
        return model

    @classmethod
    def _read_image_config(cls, folder: Path, vision_config: PretrainedConfig) -> ImageConfig:
        file = folder / PREPROCESSOR_FILE
        if not file.is_file():
            logger.info("%s has no %s; using the %s defaults", folder, PREPROCESSOR_FILE, cls.family)
            return ImageConfig(size=_square_size(vision_config.image_size, "image_size"),
                               mean=cls.default_mean, std=cls.default_std)
        try:
            raw = json.loads(file.read_text())
            # CLIP resizes then centre-crops: the crop is what the model sees.
            crops = raw.get("do_center_crop", True) and raw.get("crop_size")
            size_entry = crops or raw.get("size") or vision_config.image_size
            return ImageConfig(size=_square_size(size_entry, f"{file} size"),
                               mean=_triple(raw.get("image_mean", cls.default_mean)),
                               std=_triple(raw.get("image_std", cls.default_std)))
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"malformed preprocessor config {file}: {err}") from err

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> HFVisionTower:
        image = ImageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["image"].items()})
        model = cls.model_class(cls.config_class.from_dict(spec["vision_config"]))
        return cls(model, image, spec["feature_layer"], spec["use_cls"])

    def spec(self) -> dict[str, Any]:
        vision_config = json.loads(self.model.config.to_json_string(use_diff=False))
        # The source folder's path means nothing once the spec travels inside a VLM folder.
        vision_config.pop("_name_or_path", None)
        return {"name": self.family, "vision_config": vision_config, "image": asdict(self.image),
                "feature_layer": self.feature_layer, "use_cls": self.use_cls}

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_patches(self) -> int:
        grid = self.image.size // _square_size(self.model.config.patch_size, "patch_size")
        return grid * grid + int(self.use_cls)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.feature_layer]
        return hidden[:, 1:] if self.has_class_token and not self.use_cls else hidden


@ENCODERS.register("clip")
class CLIPTower(HFVisionTower):
    """OpenAI-style CLIP ViT (LLaVA-1.5's tower); the class token leads the sequence."""

    family = "clip"
    config_class = CLIPVisionConfig
    model_class = CLIPVisionModel
    default_mean = tuple(OPENAI_CLIP_MEAN)
    default_std = tuple(OPENAI_CLIP_STD)
    has_class_token = True


@ENCODERS.register("siglip")
class SiglipTower(HFVisionTower):
    """SigLIP ViT: patch tokens only, pixels scaled to [-1, 1]."""

    family = "siglip"
    config_class = SiglipVisionConfig
    model_class = SiglipVisionModel
    default_mean = tuple(IMAGENET_STANDARD_MEAN)
    default_std = tuple(IMAGENET_STANDARD_STD)
    has_class_token = False


def _square_size(value: Any, what: str) -> int:
    """An int side from the forms transformers configs use: 224, [224, 224], {"height": h, "width": w},
    {"shortest_edge": s}. Non-square sizes are rejected because towers assume a square patch grid."""
    if isinstance(value, dict):
        if "shortest_edge" in value:
            value = value["shortest_edge"]
        elif {"height", "width"} <= value.keys():
            value = (value["height"], value["width"])
        else:
            raise ValueError(f"{what}: cannot read a size from {value}")
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{what}: only square sizes are supported, got {value}")
        value = value[0]
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what}: expected a positive int, got {value!r}")
    return value


def _triple(values: Any) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {values}")
    return tuple(float(v) for v in values)
