"""Vision-tower registry entries: CLIP / SigLIP from local folders, released open_clip OpenVision folders,
and the token-reducing pixel-shuffle connector."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from mllm.connectors import build_connector
from mllm.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageConfig
from mllm.encoders.hf_towers import CLIPTower, SiglipTower
from mllm.encoders.tower import EncoderConfig, OpenVisionTower, build_tower, save_encoder
from mllm.encoders.vit import VisionTransformer, ViTConfig
from mllm.llm import LLMConfig, build_llm, load_tokenizer
from mllm.train_stages.vlm_trainer import set_trainable
from mllm.vlm import VisionLanguageModel

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
TEXT = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
FAMILIES = {"clip": (CLIPVisionConfig, CLIPVisionModel), "siglip": (SiglipVisionConfig, SiglipVisionModel)}


def _save_vision_model(family: str, folder: Path, seed: int = 0) -> torch.nn.Module:
    config_class, model_class = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_class(config_class(**VISION)).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    _save_vision_model("clip", folder)
    return folder


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_features_are_the_chosen_hidden_state_without_a_class_token(family: str, tmp_path: Path) -> None:
    reference = _save_vision_model(family, tmp_path)
    tower = build_tower(EncoderConfig(name=family, path=str(tmp_path))).eval()
    assert isinstance(tower.model, FAMILIES[family][1])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        features = tower(pixels)
    expected = hidden[:, 1:] if family == "clip" else hidden
    assert features.shape == (2, tower.num_patches, tower.width) == (2, 16, 32)
    assert torch.allclose(features, expected, atol=1e-6)


def test_clip_keeps_the_class_token_when_asked(clip_dir: Path) -> None:
    tower = build_tower(EncoderConfig(name="clip", path=str(clip_dir), feature_layer=-1, use_cls=True)).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = tower.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        assert torch.equal(tower(pixels), expected)
    assert tower.num_patches == 17
    with pytest.raises(ValueError, match="feature_layer 3 out of range for a 2-layer clip encoder"):
        build_tower(EncoderConfig(name="clip", path=str(clip_dir), feature_layer=3))


def test_siglip_rejects_use_cls(tmp_path: Path) -> None:
    _save_vision_model("siglip", tmp_path)
    with pytest.raises(ValueError, match="siglip vision models have no class token"):
        build_tower(EncoderConfig(name="siglip", path=str(tmp_path), use_cls=True))


def test_preprocessing_comes_from_preprocessor_config_or_family_defaults(clip_dir: Path, tmp_path: Path) -> None:
    assert build_tower(EncoderConfig(name="clip", path=str(clip_dir))).image.mean == tuple(OPENAI_CLIP_MEAN)
    assert build_tower(EncoderConfig(name="clip", path=str(clip_dir))).image.std == tuple(OPENAI_CLIP_STD)
    _save_vision_model("siglip", tmp_path)
    siglip = build_tower(EncoderConfig(name="siglip", path=str(tmp_path))).image
    assert (siglip.size, siglip.mean, siglip.std) == (32, (0.5,) * 3, (0.5,) * 3)

    custom = {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 40},
              "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(custom))
    image = build_tower(EncoderConfig(name="siglip", path=str(tmp_path))).image
    assert (image.size, image.mean, image.std) == (32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))

    custom["crop_size"] = {"height": 64, "width": 64}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(custom))
    with pytest.raises(ValueError, match="preprocessing size 64 differs from the siglip model's image_size 32"):
        build_tower(EncoderConfig(name="siglip", path=str(tmp_path)))


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_a_full_two_tower_folder_loads_its_vision_half(family: str, tmp_path: Path) -> None:
    full_class, config_class = {"clip": (CLIPModel, CLIPConfig), "siglip": (SiglipModel, SiglipConfig)}[family]
    torch.manual_seed(0)
    full = full_class(config_class(vision_config=VISION, text_config=TEXT)).eval()
    full.save_pretrained(tmp_path)
    tower = build_tower(EncoderConfig(name=family, path=str(tmp_path)))
    assert isinstance(tower.model, FAMILIES[family][1]) and tower.width == 32
    expected = full.vision_model.state_dict()
    loaded = tower.model.state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)


def test_weights_that_do_not_fit_are_an_error_not_a_random_init(clip_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(clip_dir, tmp_path / "clip")
    config = json.loads((tmp_path / "clip" / "config.json").read_text())
    (tmp_path / "clip" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="do not fit the vision model .*missing_keys: encoder.layers.2"):
        build_tower(EncoderConfig(name="clip", path=str(tmp_path / "clip")))


def test_random_init_is_seeded_and_differs_from_the_weights(clip_dir: Path) -> None:
    trained = build_tower(EncoderConfig(name="clip", path=str(clip_dir))).state_dict()
    a = build_tower(EncoderConfig(name="clip", path=str(clip_dir), random_init=True, seed=1)).state_dict()
    b = build_tower(EncoderConfig(name="clip", path=str(clip_dir), random_init=True, seed=1)).state_dict()
    key = "model.encoder.layers.0.mlp.fc1.weight"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[key], trained[key])


def test_registry_and_missing_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown vision encoder 'clip2'; available: clip, openvision, siglip"):
        build_tower(EncoderConfig(name="clip2", path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="clip model config not found: .*config.json"):
        build_tower(EncoderConfig(name="clip", path=str(tmp_path)))
    with pytest.raises(ValueError, match="encoder.path must name a local siglip model folder"):
        build_tower(EncoderConfig(name="siglip"))


def _tiny_vlm(tower: CLIPTower | SiglipTower, connector: str, tiny_world: Path) -> tuple[VisionLanguageModel, object]:
    torch.manual_seed(0)
    cfg = LLMConfig(tokenizer=str(tiny_world / "tokenizer"), hidden_size=64, num_layers=2, num_heads=2,
                    num_kv_heads=2, intermediate_size=128)
    tokenizer = load_tokenizer(cfg)
    return VisionLanguageModel.assemble(tower, connector, build_llm(cfg, tokenizer), tokenizer), tokenizer


def _prompt(tokenizer: object, model: VisionLanguageModel, text: str) -> torch.Tensor:
    from mllm.data.conversation import encode_prompt

    return torch.tensor([encode_prompt(tokenizer, "<image>\n" + text, "chat", model.num_image_tokens)])


def test_vlm_with_a_clip_tower_saves_and_loads_without_the_original_folder(tmp_path: Path, tiny_world: Path) -> None:
    _save_vision_model("clip", tmp_path / "clip")
    tower = build_tower(EncoderConfig(name="clip", path=str(tmp_path / "clip"), feature_layer=-1))
    model, tokenizer = _tiny_vlm(tower, "pixel_shuffle2x2", tiny_world)
    model.eval().save_pretrained(tmp_path / "vlm", tokenizer)
    shutil.rmtree(tmp_path / "clip")
    loaded, _ = VisionLanguageModel.from_pretrained(tmp_path / "vlm")
    loaded.eval()
    assert isinstance(loaded.tower, CLIPTower) and loaded.tower.feature_layer == -1
    assert loaded.tower.image == tower.image and loaded.num_image_tokens == 4
    assert "_name_or_path" not in loaded.tower.spec()["vision_config"]
    ids, pixels = _prompt(tokenizer, model, "What shape is it?"), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = model(ids, torch.ones_like(ids), pixels).logits
        b = loaded(ids, torch.ones_like(ids), pixels).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_a_trainable_clip_tower_gets_gradients(clip_dir: Path, tiny_world: Path) -> None:
    model, tokenizer = _tiny_vlm(build_tower(EncoderConfig(name="clip", path=str(clip_dir))), "mlp2x_gelu",
                                 tiny_world)
    set_trainable(model, ["tower"])
    ids = _prompt(tokenizer, model, "Describe the image.")
    model(ids, torch.ones_like(ids), torch.randn(1, 3, 32, 32), ids.clone()).loss.backward()
    # feature_layer -2 reads the first of two layers, so that layer and the embeddings must learn.
    first_layer = model.tower.model.encoder.layers[0]
    for weight in (first_layer.self_attn.q_proj.weight, first_layer.mlp.fc2.weight,
                   model.tower.model.embeddings.patch_embedding.weight):
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.connector.parameters())
    assert all(p.grad is None for p in model.llm.parameters())


def _released_folder(folder: Path, vit: VisionTransformer, preprocess: dict | None, pickle: bool = False) -> None:
    """A folder laid out like a released OpenVision checkpoint, with text-tower keys and a `proj`."""
    folder.mkdir(parents=True, exist_ok=True)
    vision_cfg = {"image_size": 32, "layers": 4, "width": 128, "head_width": 32, "patch_size": 16, "mlp_ratio": 4.0,
                  "no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True, "norm_kwargs": {"eps": 1e-6}}
    config = {"model_cfg": {"embed_dim": 64, "vision_cfg": vision_cfg, "text_cfg": {"width": 64, "layers": 1}}}
    if preprocess is not None:
        config["preprocess_cfg"] = preprocess
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {f"visual.{k}": v.clone() for k, v in vit.state_dict().items()}
    state["visual.proj"] = torch.randn(128, 64)
    state["text.token_embedding.weight"] = torch.randn(10, 64)
    state["logit_scale"] = torch.tensor(2.0)
    if pickle:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    else:
        save_file(state, str(folder / "open_clip_model.safetensors"))


@pytest.mark.parametrize("pickle", [False, True])
def test_released_open_clip_folder_matches_our_vit(pickle: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig("Pico", patch_size=16, image_size=32)).eval()
    preprocess = {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1], "interpolation": "bilinear"}
    _released_folder(tmp_path, vit, preprocess, pickle)
    tower = build_tower(EncoderConfig(path=str(tmp_path))).eval()
    assert tower.vit.config == vit.config and tower.vit.proj is None
    assert (tower.image.size, tower.image.mean, tower.image.std) == (32, (0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tower(pixels), OpenVisionTower(vit, tower.image)(pixels))
    rebuilt = OpenVisionTower.from_spec(tower.spec())
    rebuilt.load_state_dict(tower.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(pixels), tower(pixels))


def test_released_folder_defaults_and_errors(tmp_path: Path) -> None:
    vit = VisionTransformer(ViTConfig("Pico", patch_size=16, image_size=32))
    _released_folder(tmp_path / "ok", vit, preprocess=None)
    image = build_tower(EncoderConfig(path=str(tmp_path / "ok"))).image
    assert (image.mean, image.std) == (IMAGENET_MEAN, IMAGENET_STD)

    _released_folder(tmp_path / "odd", vit, preprocess=None)
    config = json.loads((tmp_path / "odd" / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["width"] = 96
    (tmp_path / "odd" / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"odd: vision tower width/layers/mlp/heads 96/4/384/3 match no known"):
        build_tower(EncoderConfig(path=str(tmp_path / "odd")))

    (tmp_path / "ok" / "open_clip_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="released encoder weights not found in .*ok"):
        build_tower(EncoderConfig(path=str(tmp_path / "ok")))


def test_pixel_shuffle_merges_each_2x2_neighbourhood() -> None:
    connector = build_connector("pixel_shuffle2x2", 8, 20)
    assert connector.num_tokens(16) == 4
    features = torch.randn(2, 16, 8)
    out = connector(features)
    assert out.shape == (2, 4, 20)
    grid = features.view(2, 4, 4, 8)
    # Token 1 is the neighbourhood at rows 0-1, columns 2-3.
    merged = torch.cat([grid[:, 0, 2], grid[:, 0, 3], grid[:, 1, 2], grid[:, 1, 3]], dim=-1)
    assert torch.allclose(out[:, 1], connector.fc2(connector.act(connector.fc1(merged))), atol=1e-6)


@pytest.mark.parametrize("num_patches", [17, 9, 12])
def test_pixel_shuffle_rejects_grids_it_cannot_merge(num_patches: int) -> None:
    connector = build_connector("pixel_shuffle2x2", 8, 20)
    with pytest.raises(ValueError, match=f"square patch grid with an even side, got {num_patches} tokens"):
        connector.num_tokens(num_patches)
    with pytest.raises(ValueError, match="square patch grid with an even side"):
        connector(torch.randn(1, num_patches, 8))


def test_input_resolution_is_a_parameter_for_sin_cos_towers_only(clip_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig("Pico", patch_size=16, image_size=32))
    save_encoder(vit, ImageConfig(size=32), tmp_path / "ov")
    tower = build_tower(EncoderConfig(path=str(tmp_path / "ov"), image_size=64))
    assert tower.image.size == 64 and tower.num_patches == 16
    assert tower(torch.randn(1, 3, 64, 64)).shape == (1, 16, 128)
    with pytest.raises(ValueError, match="encoder.image_size 64: a clip tower's learned position embeddings fit "
                                         "only its own size, 32"):
        build_tower(EncoderConfig(name="clip", path=str(clip_dir), image_size=64))
