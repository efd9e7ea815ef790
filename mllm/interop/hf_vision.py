"""Vision towers <-> transformers vision models, as the LLaVA family (`LlavaModel.vision_tower`) holds them.

LLaVA builds its tower with `AutoModel.from_config(vision_config)`, reads `hidden_states[vision_feature_layer]`
(index 0 = embeddings, then one entry per block, like ours) and, with `vision_feature_select_strategy` "default",
drops the first token; "full" keeps every token.

- `openvision` <-> `ViTModel`. CLIPVisionModel cannot match: it has a LayerNorm before the blocks. ViTModel has
  none, and is otherwise the same computation: class token, conv patch embedding (its bias set to zero), added
  position table (its learned table set to our fixed sin-cos one, class row zero), pre-norm blocks with separate
  q/k/v projections (our packed in_proj split into rows [q; k; v]), exact GELU. Our `ln_post` (applied only to
  the pooled feature) is stored as ViTModel's final `layernorm`, which LLaVA never reads; the unused pooler
  is zero.
- `clip` / `siglip` towers already hold a transformers vision model, which is shared as is. SigLIP has no class
  token, so it needs the "full" strategy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import AutoModel, CLIPVisionModel, PreTrainedModel, SiglipVisionModel, ViTModel
from transformers import ViTConfig as HFViTConfig

from mllm.data.images import ImageConfig
from mllm.encoders.hf_towers import CLIPTower, HFVisionTower, SiglipTower
from mllm.encoders.tower import OpenVisionTower, VisionTower
from mllm.encoders.vit import VIT_VARIANTS, VisionTransformer, ViTConfig, posemb_sincos_2d
from mllm.interop import ExportError


@dataclass
class HFVision:
    """A tower as the LLaVA family describes it."""

    model: PreTrainedModel
    feature_layer: int  # LLaVA's vision_feature_layer
    select_strategy: str  # LLaVA's vision_feature_select_strategy
    num_additional_tokens: int  # tokens before the patch grid (the class token), the processor's count
    patch_size: int


def vision_to_hf(tower: VisionTower) -> HFVision:
    """The transformers vision model with equal numerics to `tower`, and how LLaVA must read its features."""
    if isinstance(tower, OpenVisionTower):
        strategy = "full" if tower.use_cls else "default"
        return HFVision(openvision_to_vit(tower), tower.feature_layer, strategy, 1, tower.vit.config.patch_size)
    if isinstance(tower, HFVisionTower):
        has_cls = tower.has_class_token
        strategy = "default" if has_cls and not tower.use_cls else "full"
        return HFVision(tower.model, tower.feature_layer, strategy, int(has_cls), tower.model.config.patch_size)
    raise ExportError(f"no LLaVA vision model reproduces the {type(tower).__name__} tower "
                      f"({tower.spec().get('name')!r}); exportable towers: openvision, clip, siglip")


def vision_from_hf(model: PreTrainedModel, image: ImageConfig, feature_layer: int | list[int],
                   select_strategy: str) -> VisionTower:
    """Our tower for a LLaVA vision model read at `feature_layer` with `select_strategy`."""
    if not isinstance(feature_layer, int):
        raise ExportError(f"vision_feature_layer {feature_layer} concatenates several layers; "
                          "mllm towers read one layer")
    if select_strategy not in ("default", "full"):
        raise ExportError(f"unknown vision_feature_select_strategy {select_strategy!r}")
    keep_first = select_strategy == "full"
    if isinstance(model, ViTModel):
        return vit_to_openvision(model, image, feature_layer, keep_first)
    if isinstance(model, CLIPVisionModel):
        return CLIPTower(model, image, feature_layer, use_cls=keep_first)
    if isinstance(model, SiglipVisionModel):
        if not keep_first:
            raise ExportError("this LLaVA drops the first SigLIP patch token (strategy 'default'); "
                              "the siglip tower keeps every patch")
        return SiglipTower(model, image, feature_layer)
    raise ExportError(f"no mllm tower reproduces the vision model {type(model).__name__}; "
                      "importable: ViTModel (openvision), CLIPVisionModel, SiglipVisionModel")


def openvision_to_vit(tower: OpenVisionTower) -> ViTModel:
    vit, size = tower.vit, tower.image.size
    cfg = vit.config
    hf_config = HFViTConfig(
        hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp_dim, hidden_act="gelu", layer_norm_eps=cfg.ln_eps, image_size=size,
        patch_size=cfg.patch_size, num_channels=3, qkv_bias=True, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = AutoModel.from_config(hf_config)  # the class LLaVA will build for this config
    if not isinstance(model, ViTModel):
        raise ExportError(f"transformers builds {type(model).__name__} for a ViT config, not ViTModel")
    grid = size // cfg.patch_size
    model.load_state_dict(_vit_state(vit, grid), strict=True)
    return model.to(vit.conv1.weight.dtype).eval()


def _vit_state(vit: VisionTransformer, grid: int) -> dict[str, Tensor]:
    src = {k: v.detach() for k, v in vit.state_dict().items()}
    width = vit.config.width
    state = {
        "embeddings.cls_token": src["class_embedding"].reshape(1, 1, width),
        # Off the configured grid our tower rebuilds the table for the input; the export fixes it for `grid`.
        "embeddings.position_embeddings": vit.position_table(grid, grid).detach().unsqueeze(0),
        "embeddings.patch_embeddings.projection.weight": src["conv1.weight"],
        "embeddings.patch_embeddings.projection.bias": src["conv1.weight"].new_zeros(width),
        "layernorm.weight": src["ln_post.weight"],
        "layernorm.bias": src["ln_post.bias"],
        "pooler.dense.weight": src["ln_post.weight"].new_zeros(width, width),
        "pooler.dense.bias": src["ln_post.bias"].new_zeros(width),
    }
    for i in range(vit.config.depth):
        ours, theirs = f"transformer.resblocks.{i}.", f"layers.{i}."
        for name, tensor in zip("qkv", src[ours + "attn.in_proj_weight"].chunk(3), strict=True):
            state[f"{theirs}attention.{name}_proj.weight"] = tensor
        for name, tensor in zip("qkv", src[ours + "attn.in_proj_bias"].chunk(3), strict=True):
            state[f"{theirs}attention.{name}_proj.bias"] = tensor
        for our_name, their_name in _BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                state[f"{theirs}{their_name}.{kind}"] = src[f"{ours}{our_name}.{kind}"]
    return state


_BLOCK_NAMES = {"attn.out_proj": "attention.o_proj", "ln_1": "layernorm_before", "ln_2": "layernorm_after",
                "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def vit_to_openvision(model: ViTModel, image: ImageConfig, feature_layer: int, use_cls: bool) -> OpenVisionTower:
    """Refuses a ViT that computes something an OpenVision ViT cannot (learned positions, patch bias, ...)."""
    c = model.config
    dims = (c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.num_attention_heads)
    variant = next((name for name, v in VIT_VARIANTS.items() if v == dims), None)
    problems = []
    if variant is None:
        problems.append(f"(width, depth, mlp, heads) {dims} is no OpenVision variant")
    if c.hidden_act != "gelu" or not c.qkv_bias or c.num_channels != 3:
        problems.append(f"hidden_act {c.hidden_act!r}, qkv_bias {c.qkv_bias}, {c.num_channels} channels "
                        "(need exact 'gelu', q/k/v biases, RGB)")
    if not isinstance(c.patch_size, int) or not isinstance(c.image_size, int) or c.image_size != image.size:
        problems.append(f"patch_size {c.patch_size} / image_size {c.image_size} must be ints and the image size "
                        f"must equal the processor's {image.size}")
    embeddings = model.embeddings
    if embeddings.patch_embeddings.projection.bias is not None and embeddings.patch_embeddings.projection.bias.any():
        problems.append("the patch embedding has a nonzero bias")
    if not problems:
        grid = c.image_size // c.patch_size
        table = posemb_sincos_2d(grid, grid, c.hidden_size)
        if not torch.allclose(embeddings.position_embeddings.detach().float().reshape(table.shape), table,
                              atol=max(1e-4, 2 * torch.finfo(embeddings.position_embeddings.dtype).eps)):
            problems.append("the position embeddings are not the fixed 2-D sin-cos table")
    if problems:
        raise ExportError("this ViTModel is not an OpenVision encoder: " + "; ".join(problems))
    vit = VisionTransformer(ViTConfig(variant, patch_size=c.patch_size, image_size=c.image_size,
                                      ln_eps=c.layer_norm_eps))
    hf_state = model.state_dict()
    state = {our: hf_state[theirs] for theirs, our in _inverse_names(c.num_hidden_layers).items()}
    state["class_embedding"] = hf_state["embeddings.cls_token"].reshape(-1)
    state["positional_embedding"] = vit.positional_embedding
    for i in range(c.num_hidden_layers):
        prefix = f"layers.{i}.attention."
        for kind in ("weight", "bias"):
            qkv = [hf_state[f"{prefix}{name}_proj.{kind}"] for name in "qkv"]
            state[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
    vit.load_state_dict(state, strict=True)
    return OpenVisionTower(vit.to(embeddings.cls_token.dtype), image, feature_layer, use_cls)


def _inverse_names(depth: int) -> dict[str, str]:
    names = {"embeddings.patch_embeddings.projection.weight": "conv1.weight",
             "layernorm.weight": "ln_post.weight", "layernorm.bias": "ln_post.bias"}
    for i in range(depth):
        for our_name, their_name in _BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                names[f"layers.{i}.{their_name}.{kind}"] = f"transformer.resblocks.{i}.{our_name}.{kind}"
    return names
