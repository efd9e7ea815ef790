"""Export to transformers' LLaVA and import back: logits parity, generation, processor, round trip, refusals.

Parity tolerance: max |logits difference| < 1e-4 in float32 on the same input_ids and pixel_values.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from mllm.cli import main
from mllm.connectors import CONNECTORS, MLPConnector
from mllm.data.conversation import encode_prompt
from mllm.data.images import ImageConfig, to_tensor
from mllm.encoders.hf_towers import CLIPTower, SiglipTower
from mllm.encoders.tower import EncoderConfig, build_tower, save_encoder
from mllm.encoders.vit import VisionTransformer, ViTConfig
from mllm.interop import ExportConfig, ExportError, export
from mllm.interop.hf_llava import export_hf_llava
from mllm.llm import IMAGE_TOKEN, LLMConfig, build_llm, load_tokenizer
from mllm.vlm import VisionLanguageModel

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tokenizer(tiny_world: Path) -> object:
    return load_tokenizer(LLMConfig(tokenizer=str(tiny_world / "tokenizer")))


def _llm(tokenizer: object, seed: int = 0) -> object:
    torch.manual_seed(seed)
    cfg = LLMConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=128)
    return build_llm(cfg, tokenizer)


def _openvision_tower(tmp: Path, **encoder: object) -> object:
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig("Pico", patch_size=16, image_size=32))
    # Nonzero biases, so a mapping that dropped them would show in the logits.
    for name, param in vit.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.normal_(param, std=0.1)
    save_encoder(vit, ImageConfig(size=32), tmp)
    return build_tower(EncoderConfig(path=str(tmp), **encoder))


@pytest.fixture(scope="module")
def exported(tokenizer: object, tmp_path_factory: pytest.TempPathFactory) -> tuple[VisionLanguageModel, Path, Path]:
    """(our model, its mllm folder, its HF LLaVA export)."""
    tower = _openvision_tower(tmp_path_factory.mktemp("encoder"))
    model = VisionLanguageModel.assemble(tower, "mlp2x_gelu", _llm(tokenizer), tokenizer).eval()
    source = tmp_path_factory.mktemp("model") / "vlm"
    model.save_pretrained(source, tokenizer)
    out = export(ExportConfig(model=str(source), out=str(tmp_path_factory.mktemp("export") / "hf")))
    return model, source, out


def _inputs(model: VisionLanguageModel, tokenizer: object, question: str, seed: int = 1) -> tuple[torch.Tensor, ...]:
    ids = torch.tensor([encode_prompt(tokenizer, IMAGE_TOKEN + "\n" + question, "chat", model.num_image_tokens)])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones_like(ids), pixels


def _max_gap(model: VisionLanguageModel, hf: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    ids, mask, pixels = inputs
    with torch.no_grad():
        ours = model(ids, mask, pixels).logits
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    return float((ours - theirs).abs().max())


def test_exported_llava_gives_our_logits_and_greedy_tokens(exported, tokenizer) -> None:
    model, _, out = exported
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf.model.vision_tower).__name__ == "ViTModel"
    assert hf.config.image_token_index == model.image_token_id and hf.config.vision_feature_layer == -2
    assert hf.config.tie_word_embeddings and hf.lm_head.weight is hf.model.language_model.embed_tokens.weight
    inputs = _inputs(model, tokenizer, "What colour is the star?")
    assert _max_gap(model, hf, inputs) < TOLERANCE
    ids, mask, pixels = inputs
    ours = model.generate(ids, mask, pixels, 8, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    theirs = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=8, do_sample=False,
                         eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
    assert theirs[0, ids.shape[1]:].tolist() == ours[0].tolist() and ours.shape[1] > 0


def test_processor_matches_our_prompt_and_pixels(exported, tokenizer) -> None:
    model, _, out = exported
    processor = AutoProcessor.from_pretrained(out)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    prompt = IMAGE_TOKEN + "\nHow many shapes are there?"
    text = processor.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    batch = processor(text=text, images=image, add_special_tokens=False, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == encode_prompt(tokenizer, prompt, "chat", model.num_image_tokens)
    assert torch.allclose(batch["pixel_values"][0], to_tensor(image, model.tower.image), atol=1e-6)


def test_pad_to_square_is_llavas_pad_mode_up_to_the_fill_colour_rounding(exported) -> None:
    model, _, out = exported
    processor = AutoProcessor.from_pretrained(out)
    rng = np.random.default_rng(1)
    wide = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    ours = to_tensor(wide, replace(model.tower.image, pad_to_square=True))
    theirs = processor.image_processor(wide, do_pad=True, return_tensors="pt")["pixel_values"][0]
    # HF truncates mean * 255 for the fill where we round: at most one grey level apart, in the borders only.
    one_level = 1 / 255 / min(model.tower.image.std)
    assert float((ours - theirs).abs().max()) <= one_level + 1e-5
    squashed = processor.image_processor(wide, return_tensors="pt")["pixel_values"][0]
    assert float((ours - squashed).abs().max()) > 10 * one_level


def test_export_then_import_round_trips(exported, tokenizer) -> None:
    model, _, out = exported
    loaded, loaded_tokenizer = VisionLanguageModel.from_pretrained(out)
    assert loaded.tower.spec()["name"] == "openvision" and loaded.connector_name == "mlp2x_gelu"
    assert loaded.num_image_tokens == model.num_image_tokens and loaded.tower.image == model.tower.image
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    ids, mask, pixels = _inputs(model, tokenizer, "Is there a circle?")
    with torch.no_grad():
        assert torch.allclose(model(ids, mask, pixels).logits, loaded(ids, mask, pixels).logits, atol=1e-5)


def _clip_tower(tmp: Path) -> CLIPTower:
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2, image_size=32, patch_size=16))
    return CLIPTower(clip.eval(), ImageConfig(size=32), feature_layer=-1, use_cls=True)


def _siglip_tower(tmp: Path) -> SiglipTower:
    torch.manual_seed(0)
    siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=2, image_size=32, patch_size=16))
    return SiglipTower(siglip.eval(), ImageConfig(size=32, mean=(0.5,) * 3, std=(0.5,) * 3), feature_layer=-2)


@pytest.mark.parametrize(("build", "strategy", "tokens"), [
    # The last layer: ViTModel's hidden_states[-1] must be the block output, not its final LayerNorm's.
    (lambda tmp: _openvision_tower(tmp, feature_layer=-1, use_cls=True), "full", 5),
    (_clip_tower, "full", 5),
    (_siglip_tower, "full", 4),
], ids=["openvision-last-layer-with-cls", "clip-with-cls", "siglip"])
def test_other_towers_and_feature_choices_export_and_import(tokenizer, tmp_path: Path, build: object,
                                                            strategy: str, tokens: int) -> None:
    tower = build(tmp_path / "encoder")
    model = VisionLanguageModel.assemble(tower, "mlp2x_gelu", _llm(tokenizer, seed=1), tokenizer).eval()
    export_hf_llava(model, tokenizer, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.config.vision_feature_select_strategy == strategy and model.num_image_tokens == tokens
    inputs = _inputs(model, tokenizer, "Describe it.")
    assert _max_gap(model, hf, inputs) < TOLERANCE
    batch = AutoProcessor.from_pretrained(tmp_path / "hf")(text=IMAGE_TOKEN, images=Image.new("RGB", (32, 32)))
    assert batch["input_ids"][0] == [model.image_token_id] * tokens
    loaded, _ = VisionLanguageModel.from_pretrained(tmp_path / "hf")
    assert type(loaded.tower) is type(tower) and loaded.tower.use_cls == tower.use_cls
    assert _max_gap(model, loaded, inputs) < 1e-5


@CONNECTORS.register("test_doubled_mlp")
class _DoubledMLP(MLPConnector):
    """Same weights as mlp2x_gelu but a different computation: what the exporter must refuse."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(features)


@pytest.mark.parametrize(("connector", "message"), [
    ("linear", "connector 'linear' has no LLaVA projector counterpart"),
    ("test_doubled_mlp", "connector 'test_doubled_mlp' has no LLaVA projector counterpart"),
    ("pixel_shuffle2x2", "connector 'pixel_shuffle2x2' has no LLaVA projector counterpart"),
    ("ln_mlp2x_gelu", "connector 'ln_mlp2x_gelu' has no LLaVA projector counterpart"),
])
def test_connectors_without_a_llava_counterpart_are_refused(tokenizer, tmp_path: Path, connector: str,
                                                           message: str) -> None:
    tower = _openvision_tower(tmp_path / "encoder")
    model = VisionLanguageModel.assemble(tower, connector, _llm(tokenizer), tokenizer)
    with pytest.raises(ExportError, match=message):
        export_hf_llava(model, tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_llm_that_changes_its_logits_is_caught_by_the_parity_check(tokenizer, tmp_path: Path) -> None:
    model = VisionLanguageModel.assemble(_openvision_tower(tmp_path / "encoder"), "mlp2x_gelu", _llm(tokenizer),
                                         tokenizer)
    # Like Cohere's logit_scale or Granite's logits_scaling: applied by the causal LM, after lm_head.
    causal_lm_forward = model.llm.forward

    def scaled_forward(*args: object, **kwargs: object) -> object:
        output = causal_lm_forward(*args, **kwargs)
        output.logits = output.logits * 2
        return output

    model.llm.forward = scaled_forward
    with pytest.raises(ExportError, match="logits differ from ours"):
        export_hf_llava(model, tokenizer, tmp_path / "out")


def test_unknown_format_and_foreign_vision_models_are_refused(exported, tokenizer, tmp_path: Path) -> None:
    model, source, out = exported
    with pytest.raises(ExportError, match="unknown export format 'onnx'"):
        export(ExportConfig(model="anywhere", format="onnx", out=str(tmp_path)))
    with pytest.raises(ExportError, match="must differ from the model folder"):
        export(ExportConfig(model=str(source), out=str(source)))
    with pytest.raises(ExportError, match="holds an mllm model"):
        export_hf_llava(model, tokenizer, source)
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        hf.model.vision_tower.embeddings.position_embeddings.add_(0.5)
    hf.save_pretrained(tmp_path)
    AutoProcessor.from_pretrained(out).save_pretrained(tmp_path)
    with pytest.raises(ExportError, match="position embeddings are not the fixed 2-D sin-cos table"):
        VisionLanguageModel.from_pretrained(tmp_path)


def test_cli_export_writes_a_loadable_folder(exported, tmp_path: Path) -> None:
    model, _, out = exported
    main(["export", "--model", str(out.parent.parent / "model0" / "vlm"), "--out", str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "processor_config.json").is_file()
