"""Vision towers: a pretrained encoder as a VLM sees it, behind a registry.

A tower turns normalised pixels into patch features taken from a chosen layer (LLaVA's default is the
second-to-last), with or without the class token. Towers are frozen unless a stage trains them.

Exported encoder folders (what `mllm pretrain` writes) hold `config.json` and `model.safetensors` with
open_clip's vision key names, so they read like the released OpenVision checkpoints.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mllm.data.images import ImageConfig
from mllm.encoders.released import is_released_folder, load_released_weights, read_released_config
from mllm.encoders.vit import VisionTransformer, ViTConfig, load_open_clip_state_dict
from mllm.registry import Registry


@dataclass
class EncoderConfig:
    """Which vision tower a VLM uses and how its features are read."""

    name: str = "openvision"
    path: str | None = None  # an exported encoder folder
    random_init: bool = False  # same architecture, fresh weights (the control experiment)
    seed: int = 0
    feature_layer: int = -2
    use_cls: bool = False
    image_size: int | None = None  # input resolution; None: the encoder's own (OpenVision's sin-cos fit any)


class VisionTower(nn.Module, ABC):
    """What a VLM needs from an encoder: features, their width and count, and the image preprocessing."""

    image: ImageConfig

    @property
    @abstractmethod
    def width(self) -> int: ...

    @property
    @abstractmethod
    def num_patches(self) -> int: ...

    @abstractmethod
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_patches, width)."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-able description from which `from_spec` rebuilds the architecture."""

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: EncoderConfig) -> VisionTower:
        """Build with weights from the user's configuration."""

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: dict[str, Any]) -> VisionTower:
        """Rebuild the architecture (weights follow separately) from a saved `spec()`."""


ENCODERS: Registry[type[VisionTower]] = Registry("vision encoder")


def save_encoder(vit: VisionTransformer, image: ImageConfig, out_dir: Path) -> None:
    """Export a ViT with open_clip key names plus its preprocessing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    config = {"vit": asdict(vit.config), "image": asdict(image)}
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))


def read_encoder_config(folder: Path) -> tuple[ViTConfig, ImageConfig]:
    file = folder / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"encoder config not found: {file} (nor a released open_clip_config.json)")
    try:
        raw = json.loads(file.read_text())
        return ViTConfig(**raw["vit"]), ImageConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                        for k, v in raw["image"].items()})
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"malformed encoder config {file}: {err}") from err


@ENCODERS.register("openvision")
class OpenVisionTower(VisionTower):
    """An OpenVision / OpenVision 2 ViT (ours or a released open_clip-format one)."""

    def __init__(self, vit: VisionTransformer, image: ImageConfig, feature_layer: int = -2,
                 use_cls: bool = False) -> None:
        super().__init__()
        depth = vit.config.depth
        if not -depth - 1 <= feature_layer <= depth:
            raise ValueError(f"feature_layer {feature_layer} out of range for a {depth}-block encoder")
        self.vit, self.image = vit, image
        self.feature_layer, self.use_cls = feature_layer, use_cls

    @classmethod
    def from_config(cls, cfg: EncoderConfig) -> OpenVisionTower:
        if cfg.path is None:
            raise ValueError("encoder.path must name an exported encoder folder")
        folder = Path(cfg.path)
        released = is_released_folder(folder)
        vit_cfg, image = read_released_config(folder) if released else read_encoder_config(folder)
        if cfg.random_init:
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed)
                vit = VisionTransformer(vit_cfg)
        elif released:
            vit = VisionTransformer(vit_cfg)
            load_released_weights(vit, folder)
        else:
            vit = VisionTransformer(vit_cfg)
            weights = folder / "model.safetensors"
            if not weights.is_file():
                raise FileNotFoundError(f"encoder weights not found: {weights}")
            load_open_clip_state_dict(vit, load_file(str(weights)))
        if cfg.image_size is not None:
            image = replace(image, size=cfg.image_size)
        return cls(vit, image, cfg.feature_layer, cfg.use_cls)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> OpenVisionTower:
        image = ImageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["image"].items()})
        return cls(VisionTransformer(ViTConfig(**spec["vit"])), image, spec["feature_layer"], spec["use_cls"])

    def spec(self) -> dict[str, Any]:
        return {"name": "openvision", "vit": asdict(self.vit.config), "image": asdict(self.image),
                "feature_layer": self.feature_layer, "use_cls": self.use_cls}

    @property
    def width(self) -> int:
        return self.vit.config.width

    @property
    def num_patches(self) -> int:
        grid = self.image.size // self.vit.config.patch_size
        return grid * grid + int(self.use_cls)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vit(pixel_values, output_hidden_states=True).hidden_states[self.feature_layer]
        return hidden if self.use_cls else hidden[:, 1:]


def build_tower(cfg: EncoderConfig) -> VisionTower:
    return ENCODERS.get(cfg.name).from_config(cfg)


def build_tower_from_spec(spec: dict[str, Any]) -> VisionTower:
    return ENCODERS.get(spec["name"]).from_spec(spec)


# Registers "clip" and "siglip"; imported last because those towers subclass VisionTower defined above.
from mllm.encoders import hf_towers  # noqa: E402, F401
