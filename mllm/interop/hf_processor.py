"""Our image preprocessing and prompt expansion <-> a transformers `LlavaProcessor`.

The image processor squashes to size x size with bilinear resampling (no centre crop), rescales by 1/255 and
normalises with our mean/std, like `mllm.data.images.to_tensor`. Our `pad_to_square` is LLaVA's "pad" aspect
mode (`do_pad`), with two differences the HF processor does not reproduce exactly:
- its fill colour truncates mean*255 where ours rounds (ImageNet mean: 123/116/103 vs 124/116/104), so padded
  borders differ by one grey level;
- with torchvision installed, `AutoProcessor` picks the torchvision backend, whose antialiased bilinear resize
  is not bit-identical to Pillow's; pass `backend="pil"` for the exact pixels.

`<image>` expands to (size // patch)^2 positions, plus one for the class token when the tower keeps it, which
is our tower's `num_patches`. The chat template is the tokenizer's: message content is a string containing
`<image>`. Tokenize a rendered template with `add_special_tokens=False`, as `encode_prompt` does.
"""

from __future__ import annotations

import logging

from transformers import LlavaProcessor, PreTrainedTokenizerBase
from transformers.image_utils import PILImageResampling
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from mllm.data.images import ImageConfig
from mllm.interop.hf_vision import HFVision
from mllm.llm import IMAGE_TOKEN

log = logging.getLogger(__name__)


def build_processor(tokenizer: PreTrainedTokenizerBase, image: ImageConfig, vision: HFVision) -> LlavaProcessor:
    side = {"height": image.size, "width": image.size}
    image_processor = LlavaImageProcessorPil(
        do_resize=True, size=side, resample=PILImageResampling.BILINEAR, do_center_crop=False, crop_size=side,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(image.mean),
        image_std=list(image.std), do_pad=image.pad_to_square, do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision.patch_size,
        vision_feature_select_strategy=vision.select_strategy, chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN, num_additional_image_tokens=vision.num_additional_tokens,
    )


def image_config_from_processor(processor: object) -> ImageConfig:
    """Our ImageConfig from a LLaVA image processor; logs where our preprocessing will differ from it."""
    config = processor.image_processor
    crop = config.crop_size if config.do_center_crop else None
    size = crop or config.size
    side = size.get("height") or size.get("shortest_edge")
    if side is None or ("width" in size and size["width"] != side):
        raise ValueError(f"only square image sizes are supported, got {size}")
    if config.do_center_crop and config.size.get("shortest_edge") is not None:
        log.warning("the HF processor resizes the short side then centre-crops; mllm squashes the whole image "
                    "to %d x %d (same pixels for square images only)", side, side)
    if config.resample not in (PILImageResampling.BILINEAR, int(PILImageResampling.BILINEAR)):
        log.warning("the HF processor resamples with %s; mllm resizes bilinearly", config.resample)
    return ImageConfig(size=int(side), mean=tuple(float(m) for m in config.image_mean),
                       std=tuple(float(s) for s in config.image_std), pad_to_square=bool(config.do_pad))
