"""Our AnyRes VLM -> a transformers LLaVA-NeXT folder (`LlavaNextForConditionalGeneration` + `LlavaNextProcessor`).

LLaVA-NeXT holds the same parts as LLaVA, so the vision, language-model and projector mappings are
`interop.hf_llava`'s; it adds the learned `image_newline` (our connector's) and the grid pinpoints. The image
processor is the Pillow-backed `LlavaNextImageProcessorPil` configured as `mllm.data.anyres` tiles: bilinear
resampling, no centre crop, our mean/std. With torchvision installed `AutoProcessor` picks the torchvision
backend, whose resize is not bit-identical to Pillow's; pass `backend="pil"` for the exact pixels.

Before writing, both models run on images of several aspect ratios (tiling, unpadding and row ends all
differ between them) and the export is refused if the logits differ.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PreTrainedTokenizerBase,
)
from transformers.image_utils import PILImageResampling
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from mllm.connectors import Connector, build_connector
from mllm.data.conversation import encode_prompt
from mllm.interop import ExportError
from mllm.interop.hf_llava import assemble_hf, export_folder, require_parity
from mllm.interop.hf_text import projector_state
from mllm.interop.hf_vision import HFVision, vision_to_hf
from mllm.llm import IMAGE_TOKEN
from mllm.vlm import NEWLINE, VisionLanguageModel

log = logging.getLogger(__name__)

# (width, height) of the parity images as multiples of the tile: wide, tall and square canvases, with
# letterboxing on both axes.
PARITY_SHAPES = ((2.3, 1.0), (0.7, 2.9), (1.6, 1.5))


def llava_next_config(model: VisionLanguageModel, vision: HFVision) -> LlavaNextConfig:
    text_config = model.llm.config
    return LlavaNextConfig(
        vision_config=vision.model.config.to_dict(), text_config=text_config.to_dict(),
        image_token_index=model.image_token_id, image_grid_pinpoints=model.grid_pinpoints,
        image_seq_length=model.num_image_tokens, projector_hidden_act="gelu",
        vision_feature_select_strategy=vision.select_strategy, vision_feature_layer=vision.feature_layer,
        multimodal_projector_bias=True, tie_word_embeddings=bool(text_config.tie_word_embeddings),
    )


def projector_connector(model: VisionLanguageModel) -> Connector:
    """The connector without the newline (LLaVA-NeXT keeps that apart from the projector), sharing its weights."""
    with torch.device("meta"):
        plain = build_connector(model.connector_name, model.tower.width, model.llm.get_input_embeddings().embedding_dim)
    state = {name: tensor for name, tensor in model.connector.state_dict().items() if name != NEWLINE}
    plain.load_state_dict(state, strict=True, assign=True)
    return plain


def build_llava_next(model: VisionLanguageModel) -> tuple[LlavaNextForConditionalGeneration, HFVision]:
    """A LLaVA-NeXT model sharing `model`'s weights, laid out exactly as transformers builds it from its config."""
    if model.anyres is None:
        raise ExportError("the model is not AnyRes (no grid pinpoints, no image_newline); export it as hf-llava")
    vision = vision_to_hf(model.tower)
    projector = projector_state(model.connector_name, projector_connector(model))
    newline = {"image_newline": model.connector.get_parameter(NEWLINE)}
    return assemble_hf(LlavaNextForConditionalGeneration, llava_next_config(model, vision), model, vision, projector,
                       newline), vision


def build_next_processor(tokenizer: PreTrainedTokenizerBase, model: VisionLanguageModel,
                         vision: HFVision) -> LlavaNextProcessor:
    image = model.tower.image
    side = {"height": image.size, "width": image.size}
    image_processor = LlavaNextImageProcessorPil(
        do_resize=True, size=side, resample=PILImageResampling.BILINEAR, do_center_crop=False, crop_size=side,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(image.mean),
        image_std=list(image.std), do_pad=True, do_convert_rgb=True, image_grid_pinpoints=model.grid_pinpoints,
    )
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision.patch_size,
        vision_feature_select_strategy=vision.select_strategy, chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN, num_additional_image_tokens=vision.num_additional_tokens,
    )


def parity_images(tile: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(max(1, round(w * tile)), max(1, round(h * tile))) for w, h in PARITY_SHAPES]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@torch.no_grad()
def logits_gap(model: VisionLanguageModel, next_model: LlavaNextForConditionalGeneration,
               tokenizer: PreTrainedTokenizerBase) -> float:
    """Largest max|logits difference| / max(1, max|logits|) over prompts with images of PARITY_SHAPES."""
    fmt = "chat" if tokenizer.chat_template else "plain"
    dtype = model.llm.get_input_embeddings().weight.dtype
    was_training = model.training
    model.eval()
    gaps = []
    try:
        for image in parity_images(model.tower.image.size):
            pixels, sizes, counts = model.preprocess_images([image])
            ids = torch.tensor([encode_prompt(tokenizer, IMAGE_TOKEN + "\nDescribe the image.", fmt, counts)])
            mask, pixels = torch.ones_like(ids), pixels.to(dtype)
            ours = model(ids, mask, pixels, image_sizes=sizes).logits.float()
            theirs = next_model(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                                image_sizes=sizes).logits.float()
            gaps.append(float((ours - theirs).abs().max() / ours.abs().max().clamp(min=1.0)))
    finally:
        model.train(was_training)
    return max(gaps)


def export_hf_llava_next(model: VisionLanguageModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Write `out` so that `LlavaNextForConditionalGeneration` / `AutoProcessor.from_pretrained(out)` reproduce
    `model`; raises ExportError (before writing anything) when they cannot."""
    out = export_folder(out)
    next_model, vision = build_llava_next(model)
    require_parity(model, logits_gap(model, next_model, tokenizer), "LLaVA-NeXT")
    out.mkdir(parents=True, exist_ok=True)
    next_model.save_pretrained(out)
    build_next_processor(tokenizer, model, vision).save_pretrained(out)
