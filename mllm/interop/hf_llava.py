"""Our VLM <-> a transformers LLaVA folder (`LlavaForConditionalGeneration` + `LlavaProcessor`, no custom code).

Export assembles a `LlavaForConditionalGeneration` around our own modules (vision model from
`interop.hf_vision`, language model and projector from `interop.hf_text`), checks that its parameter names and
shapes are exactly those transformers builds from the config, runs both models on one prompt with an image and
refuses if the logits differ, then saves the model and the processor (`interop.hf_processor`). Import does the
reverse, so `VisionLanguageModel.from_pretrained` accepts an HF LLaVA folder and a stage can start from it.

A LLaVA-NeXT exporter can reuse the part mappings: its model has the same `vision_tower`,
`multi_modal_projector`, `language_model` and `lm_head`, plus `image_newline` and AnyRes tiling.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mllm.data.conversation import encode_prompt
from mllm.interop import ExportError
from mllm.interop.hf_processor import build_processor, image_config_from_processor
from mllm.interop.hf_text import attach_text, detach_text, projector_state, projector_to_connector
from mllm.interop.hf_vision import HFVision, vision_from_hf, vision_to_hf
from mllm.llm import IMAGE_TOKEN
from mllm.vlm import CONFIG_FILE, VisionLanguageModel

log = logging.getLogger(__name__)

# Largest accepted max|logits difference| / max(1, max|logits|) between our model and the export. Both share
# the LLM's modules, so only the vision side may round differently; a different computation is far above this.
PARITY_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_PRECISION_TOLERANCE = 2e-2


def llava_config(model: VisionLanguageModel, vision: HFVision) -> LlavaConfig:
    text_config = model.llm.config
    return LlavaConfig(
        vision_config=vision.model.config.to_dict(), text_config=text_config.to_dict(),
        image_token_index=model.image_token_id, image_seq_length=model.num_image_tokens,
        projector_hidden_act="gelu", vision_feature_select_strategy=vision.select_strategy,
        vision_feature_layer=vision.feature_layer, multimodal_projector_bias=True,
        tie_word_embeddings=bool(text_config.tie_word_embeddings),
    )


def build_llava(model: VisionLanguageModel) -> tuple[LlavaForConditionalGeneration, HFVision]:
    """A LLaVA model sharing `model`'s weights, laid out exactly as transformers builds it from its config."""
    if getattr(model, "grid_pinpoints", None) is not None:
        raise ExportError("the model is in AnyRes mode (tiles + image_newline); LLaVA-1.5 has one fixed-size "
                          "image per <image>: that needs an hf-llava-next export")
    vision = vision_to_hf(model.tower)
    projector = projector_state(model.connector_name, model.connector)
    return assemble_hf(LlavaForConditionalGeneration, llava_config(model, vision), model, vision, projector), vision


def assemble_hf(cls: type[PreTrainedModel], config: PretrainedConfig, model: VisionLanguageModel, vision: HFVision,
                projector: dict[str, torch.Tensor], extra: dict[str, torch.nn.Parameter] | None = None) -> Any:
    """`cls(config)` with its vision tower, language model, projector and `extra` parameters replaced by
    `model`'s own (shared, not copied), checked to hold exactly the names and shapes transformers builds."""
    with torch.device("meta"):
        hf = cls(config)
    expected = {name: tuple(t.shape) for name, t in hf.state_dict().items()}
    if type(vision.model) is not type(hf.model.vision_tower):
        raise ExportError(f"{cls.__name__} builds {type(hf.model.vision_tower).__name__} from the vision config, "
                          f"not {type(vision.model).__name__}")
    hf.model.vision_tower = vision.model
    attach_text(hf, model.llm)
    hf.model.multi_modal_projector.load_state_dict(projector, strict=True, assign=True)
    for name, parameter in (extra or {}).items():
        setattr(hf.model, name, parameter)
    actual = {name: tuple(t.shape) for name, t in hf.state_dict().items()}
    if actual != expected:
        differences = sorted(f"{k}: {actual.get(k)} vs {expected.get(k)}" for k in set(actual) | set(expected)
                             if actual.get(k) != expected.get(k))
        raise ExportError(f"the assembled {cls.__name__} differs from what transformers builds (ours vs theirs): "
                          + "; ".join(differences[:10]))
    hf.generation_config = model.llm.generation_config
    return hf.eval()


@torch.no_grad()
def logits_gap(model: VisionLanguageModel, llava: LlavaForConditionalGeneration,
               tokenizer: PreTrainedTokenizerBase) -> float:
    """max|logits difference| / max(1, max|logits|) on one prompt with a seeded random image."""
    fmt = "chat" if tokenizer.chat_template else "plain"
    ids = torch.tensor([encode_prompt(tokenizer, IMAGE_TOKEN + "\nDescribe the image.", fmt,
                                      model.num_image_tokens)])
    mask = torch.ones_like(ids)
    size = model.tower.image.size
    dtype = model.llm.get_input_embeddings().weight.dtype
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    was_training = model.training
    model.eval()
    try:
        ours = model(ids, mask, pixels).logits.float()
        theirs = llava(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits.float()
    finally:
        model.train(was_training)
    return float((ours - theirs).abs().max() / ours.abs().max().clamp(min=1.0))


def export_folder(out: Path) -> Path:
    """`out`, refused when it holds an mllm model (an export must never overwrite its source)."""
    out = Path(out)
    if (out / CONFIG_FILE).is_file():
        raise ExportError(f"{out} holds an mllm model ({CONFIG_FILE}); export to another folder")
    return out


def require_parity(model: VisionLanguageModel, gap: float, name: str) -> None:
    """Refuse an export whose logits differ from ours by more than the dtype's tolerance."""
    tolerance = PARITY_TOLERANCE.get(model.llm.get_input_embeddings().weight.dtype, HALF_PRECISION_TOLERANCE)
    if not gap <= tolerance:
        raise ExportError(f"the {name} model's logits differ from ours by {gap:.2e} (relative) > {tolerance:.0e}; "
                          f"some part computes differently in {name}, e.g. an LLM that scales or soft-caps its "
                          "logits beyond lm_head")
    log.info("HF %s logits match ours to %.1e (relative)", name, gap)


def export_hf_llava(model: VisionLanguageModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Write `out` so that `LlavaForConditionalGeneration` / `AutoProcessor.from_pretrained(out)` reproduce
    `model`; raises ExportError (before writing anything) when they cannot."""
    out = export_folder(out)
    llava, vision = build_llava(model)
    require_parity(model, logits_gap(model, llava, tokenizer), "LLaVA")
    out.mkdir(parents=True, exist_ok=True)
    llava.save_pretrained(out)
    build_processor(tokenizer, model.tower.image, vision).save_pretrained(out)


def is_hf_llava_folder(folder: Path) -> bool:
    config = Path(folder) / "config.json"
    if (Path(folder) / CONFIG_FILE).is_file() or not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "llava"
    except json.JSONDecodeError:
        return False


def load_hf_llava(folder: Path) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """Our VLM (sharing the loaded weights) from an HF LLaVA folder; ExportError where no mllm part fits."""
    llava = LlavaForConditionalGeneration.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    tokenizer, config = processor.tokenizer, llava.config
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != config.image_token_index:
        raise ExportError(f"the tokenizer's {IMAGE_TOKEN} id is not the config's image_token_index "
                          f"{config.image_token_index}; mllm marks image positions with {IMAGE_TOKEN}")
    image = image_config_from_processor(processor)
    tower = vision_from_hf(llava.model.vision_tower, image, config.vision_feature_layer,
                           config.vision_feature_select_strategy)
    llm = detach_text(llava, config.text_config)
    model = VisionLanguageModel.assemble(tower, "mlp2x_gelu", llm, tokenizer)
    projector_to_connector(llava.model.multi_modal_projector, config.projector_hidden_act, model.connector)
    model.connector.to(llava.model.multi_modal_projector.linear_1.weight.dtype)
    expected = _processor_image_tokens(processor, image.size)
    if expected is not None and expected != model.num_image_tokens:
        raise ExportError(f"the processor expands {IMAGE_TOKEN} to {expected} positions but the model produces "
                          f"{model.num_image_tokens} features per image")
    return model.eval(), tokenizer


def _processor_image_tokens(processor: object, size: int) -> int | None:
    patch = getattr(processor, "patch_size", None)
    if patch is None:
        return None
    count = (size // patch) ** 2 + getattr(processor, "num_additional_image_tokens", 0)
    return count - int(getattr(processor, "vision_feature_select_strategy", None) == "default")
