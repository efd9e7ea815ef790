"""The VLM assembly: connectors, towers, image-token splicing, save/load, foreign LLM folders, generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mllm.connectors import CONNECTORS, Connector, build_connector
from mllm.encoders.tower import EncoderConfig, OpenVisionTower, build_tower
from mllm.llm import IMAGE_TOKEN, LLMConfig, build_llm, load_tokenizer
from mllm.registry import Registry
from mllm.train_stages.vlm_trainer import set_trainable
from mllm.vlm import VisionLanguageModel


@pytest.fixture(scope="module")
def vlm(encoder_dir: Path, tiny_world: Path) -> tuple[VisionLanguageModel, object]:
    torch.manual_seed(0)
    cfg = LLMConfig(tokenizer=str(tiny_world / "tokenizer"), hidden_size=64, num_layers=2, num_heads=2,
                    num_kv_heads=2, intermediate_size=128)
    tokenizer = load_tokenizer(cfg)
    tower = build_tower(EncoderConfig(path=str(encoder_dir)))
    model = VisionLanguageModel.assemble(tower, "mlp2x_gelu", build_llm(cfg, tokenizer), tokenizer)
    return model.eval(), tokenizer


def _prompt(tokenizer: object, model: VisionLanguageModel, text: str) -> list[int]:
    from mllm.data.conversation import encode_prompt

    return encode_prompt(tokenizer, "<image>\n" + text, "chat", model.num_image_tokens)


@pytest.mark.parametrize("name", ["linear", "mlp2x_gelu", "ln_mlp2x_gelu"])
def test_connectors_map_vision_width_to_llm_width(name: str) -> None:
    connector = build_connector(name, 48, 80)
    assert isinstance(connector, Connector)
    assert connector(torch.randn(3, 7, 48)).shape == (3, 7, 80)
    assert connector.num_tokens(7) == 7


def test_normed_connector_ignores_each_tokens_scale_and_offset() -> None:
    """Residual-stream features of any scale (the OpenVision ViT's reach norms near 100) give the MLP the same
    input: rescaling or shifting a token leaves the output unchanged, where the plain MLP's moves."""
    torch.manual_seed(0)
    features = torch.randn(2, 5, 48)
    distorted = 80 * features + 12
    normed, plain = build_connector("ln_mlp2x_gelu", 48, 80), build_connector("mlp2x_gelu", 48, 80)
    torch.testing.assert_close(normed(distorted), normed(features), atol=1e-4, rtol=1e-4)
    assert (plain(distorted) - plain(features)).abs().max() > 1.0
    plain.load_state_dict({k: v for k, v in normed.state_dict().items() if not k.startswith("norm.")})
    layer_normed = torch.nn.functional.layer_norm(features, (48,))
    torch.testing.assert_close(normed(features), plain(layer_normed))


def test_registry_errors_name_the_unknown_and_the_duplicate() -> None:
    with pytest.raises(KeyError, match="unknown connector 'mlp3x'.*linear, ln_mlp2x_gelu, mlp2x_gelu"):
        CONNECTORS.get("mlp3x")
    registry: Registry[int] = Registry("thing")
    registry.register("a")(1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        registry.register("a")(2)


def test_tower_reads_the_chosen_layer_without_the_class_token(encoder_dir: Path) -> None:
    tower = build_tower(EncoderConfig(path=str(encoder_dir), feature_layer=-2))
    pixels = torch.randn(2, 3, 32, 32)
    hidden = tower.vit(pixels, output_hidden_states=True).hidden_states
    assert torch.equal(tower(pixels), hidden[-2][:, 1:])
    assert tower(pixels).shape == (2, tower.num_patches, tower.width) == (2, 4, 128)
    with_cls = build_tower(EncoderConfig(path=str(encoder_dir), feature_layer=-1, use_cls=True))
    assert torch.equal(with_cls(pixels), hidden[-1]) and with_cls.num_patches == 5
    with pytest.raises(ValueError, match="feature_layer 9 out of range"):
        build_tower(EncoderConfig(path=str(encoder_dir), feature_layer=9))


def test_random_init_control_differs_from_the_pretrained_weights_and_is_seeded(encoder_dir: Path) -> None:
    trained = build_tower(EncoderConfig(path=str(encoder_dir))).state_dict()
    a = build_tower(EncoderConfig(path=str(encoder_dir), random_init=True, seed=1)).state_dict()
    b = build_tower(EncoderConfig(path=str(encoder_dir), random_init=True, seed=1)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["vit.transformer.resblocks.0.mlp.c_fc.weight"],
                           trained["vit.transformer.resblocks.0.mlp.c_fc.weight"])


def test_missing_encoder_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="encoder config not found: .*config.json"):
        build_tower(EncoderConfig(path=str(tmp_path)))
    with pytest.raises(KeyError, match="unknown vision encoder 'clip-x'"):
        build_tower(EncoderConfig(name="clip-x", path=str(tmp_path)))


def test_image_features_land_exactly_on_the_placeholder_positions(vlm) -> None:
    model, tokenizer = vlm
    ids = torch.tensor([_prompt(tokenizer, model, "What colour is the star?")])
    pixels = torch.randn(1, 3, 32, 32)
    embeds = model.embed(ids, pixels)
    is_image = ids[0] == model.image_token_id
    assert int(is_image.sum()) == model.num_image_tokens == 4
    expected = model.connector(model.tower(pixels))[0]
    assert torch.allclose(embeds[0, is_image], expected)
    text = model.llm.get_input_embeddings()(ids)[0, ~is_image]
    assert torch.equal(embeds[0, ~is_image], text)


def test_placeholder_count_must_match_the_images(vlm) -> None:
    model, tokenizer = vlm
    ids = torch.tensor([_prompt(tokenizer, model, "hi")])
    with pytest.raises(ValueError, match="8 image placeholder tokens for 1 images of 4 tokens"):
        model.embed(torch.cat([ids, ids], dim=1), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="4 image placeholder tokens but no images"):
        model.embed(ids, None)


def test_loss_depends_on_the_image(vlm) -> None:
    model, tokenizer = vlm
    ids = torch.tensor([_prompt(tokenizer, model, "Describe the image.") + [5, 6, 7]])
    labels = ids.clone()
    labels[ids == model.image_token_id] = -100
    mask = torch.ones_like(ids)
    a = model(ids, mask, torch.randn(1, 3, 32, 32), labels).loss
    b = model(ids, mask, torch.randn(1, 3, 32, 32), labels).loss
    assert torch.isfinite(a) and not torch.isclose(a, b)


def test_frozen_tower_gets_no_gradient(vlm) -> None:
    model, tokenizer = vlm
    set_trainable(model, ["connector"])
    ids = torch.tensor([_prompt(tokenizer, model, "Describe the image.") + [5, 6]])
    model(ids, torch.ones_like(ids), torch.randn(1, 3, 32, 32), ids.clone()).loss.backward()
    assert all(p.grad is None for p in model.tower.parameters())
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(p.grad is not None for p in model.connector.parameters())
    model.zero_grad(set_to_none=True)
    set_trainable(model, ["tower", "connector", "llm"])


def test_save_and_load_give_identical_logits(vlm, tmp_path: Path) -> None:
    model, tokenizer = vlm
    model.save_pretrained(tmp_path / "model", tokenizer)
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {
        "mllm_config.json", "vision.safetensors", "connector.safetensors", "llm", "tokenizer.json"}
    loaded, loaded_tokenizer = VisionLanguageModel.from_pretrained(tmp_path / "model")
    loaded.eval()
    ids = torch.tensor([_prompt(tokenizer, model, "What shape is in the center?")])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = model(ids, torch.ones_like(ids), pixels).logits
        b = loaded(ids, torch.ones_like(ids), pixels).logits
    assert torch.allclose(a, b, atol=1e-6)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template


def test_saving_over_an_existing_folder_replaces_it_atomically(vlm, tmp_path: Path) -> None:
    model, tokenizer = vlm
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "stale.txt").write_text("old")
    model.save_pretrained(tmp_path / "model", tokenizer)
    assert not (tmp_path / "model" / "stale.txt").exists()
    assert not (tmp_path / "model.tmp").exists()


def test_loading_a_folder_without_config_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an mllm model folder"):
        VisionLanguageModel.from_pretrained(tmp_path)


def test_batched_left_padded_generation_equals_one_at_a_time(vlm) -> None:
    model, tokenizer = vlm
    prompts = [_prompt(tokenizer, model, q) for q in ("What colour?", "Is there a large red star in it?")]
    pixels = torch.randn(2, 3, 32, 32)
    stops, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    length = max(map(len, prompts))
    ids = torch.tensor([[pad] * (length - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    batched = model.generate(ids, mask, pixels, 6, stops, pad)
    for row, prompt in enumerate(prompts):
        single = model.generate(torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long),
                                pixels[row : row + 1], 6, stops, pad)
        n = single.shape[1]
        assert batched[row, :n].tolist() == single[0].tolist()


def _foreign_tokenizer(folder: Path) -> None:
    """A tokenizer as a downloaded LLM might ship it: no pad token, no image token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(["a red star and a blue circle"] * 5, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|end|>")
    wrapped.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|end|>' }}{% endfor %}"
    wrapped.save_pretrained(folder)


def test_any_causal_lm_folder_loads_and_gains_pad_and_image_tokens(tmp_path: Path) -> None:
    _foreign_tokenizer(tmp_path)
    vocab = len(PreTrainedTokenizerFast.from_pretrained(tmp_path))
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    llama.save_pretrained(tmp_path)
    old = llama.get_input_embeddings().weight.detach().clone()
    cfg = LLMConfig(path=str(tmp_path))
    tokenizer = load_tokenizer(cfg)
    assert tokenizer.pad_token is not None and IMAGE_TOKEN in tokenizer.get_vocab()
    model = build_llm(cfg, tokenizer)
    weights = model.get_input_embeddings().weight
    assert weights.shape[0] == len(tokenizer) == vocab + 2
    assert torch.equal(weights[:vocab], old)
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_missing_llm_folder_is_named(tiny_world: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="LLM folder not found: .*nowhere"):
        build_llm(LLMConfig(path=str(tmp_path / "nowhere")), load_tokenizer(
            LLMConfig(tokenizer=str(tiny_world / "tokenizer"))))
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found"):
        load_tokenizer(LLMConfig(tokenizer=str(tmp_path / "nowhere")))


def test_openvision_tower_spec_round_trips(encoder_dir: Path) -> None:
    tower = build_tower(EncoderConfig(path=str(encoder_dir), feature_layer=-1))
    rebuilt = OpenVisionTower.from_spec(tower.spec())
    rebuilt.load_state_dict(tower.state_dict())
    pixels = torch.randn(1, 3, 32, 32)
    assert torch.equal(tower(pixels), rebuilt(pixels)) and rebuilt.image == tower.image
