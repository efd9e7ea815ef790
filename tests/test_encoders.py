"""Behaviour tests for the OpenVision ViT, the OpenVision 2 caption decoder and the pretraining objective."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mllm.encoders.caption_decoder import CaptionDecoder, CaptionDecoderConfig
from mllm.encoders.objectives import (
    OBJECTIVES,
    OpenVision2Config,
    OpenVision2Objective,
    keep_random_tokens,
)
from mllm.encoders.vit import (
    Attention,
    VisionTransformer,
    ViTConfig,
    load_open_clip_state_dict,
    num_parameters,
    posemb_sincos_2d,
)

PAD, BOS, EOS = 0, 1, 2


def make_vit(name: str = "Pico/16", image_size: int = 32, out_dim: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return VisionTransformer(ViTConfig.from_name(name, image_size), out_dim=out_dim).eval()


def make_objective(seed: int = 0, pad_id: int = PAD, **overrides: object) -> OpenVision2Objective:
    torch.manual_seed(seed)
    config = OpenVision2Config(**{"image_size": 64, **overrides})
    return OpenVision2Objective(config, vocab_size=40, pad_id=pad_id)


def captions(rows: list[list[int]], length: int, pad_id: int = PAD) -> Tensor:
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for i, words in enumerate(rows):
        seq = [BOS, *words, EOS]
        ids[i, : len(seq)] = torch.tensor(seq)
    return ids


# ---------------------------------------------------------------------------------------------- ViT


@pytest.mark.parametrize(
    ("name", "image_size", "out_dim"), [("Pico/16", 32, None), ("Nano/8", 32, 64), ("Ti/16", 48, None)]
)
def test_vit_output_shapes(name: str, image_size: int, out_dim: int | None) -> None:
    model = make_vit(name, image_size, out_dim)
    cfg = model.config
    n = (image_size // cfg.patch_size) ** 2
    out = model(torch.randn(2, 3, image_size, image_size), output_hidden_states=True)
    assert out.tokens.shape == (2, n, cfg.width)
    assert out.pooled.shape == (2, out_dim or cfg.width)
    assert out.hidden_states is not None and len(out.hidden_states) == cfg.depth + 1
    assert all(h.shape == (2, 1 + n, cfg.width) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[-1][:, 1:], out.tokens)
    pooled = model.ln_post(out.tokens.mean(1))
    if out_dim is not None:
        pooled = pooled @ model.proj
    torch.testing.assert_close(out.pooled, pooled)
    assert model(torch.randn(1, 3, image_size, image_size)).hidden_states is None


def test_vit_name_parsing_and_errors() -> None:
    cfg = ViTConfig.from_name("So400m/14", 384)
    assert (cfg.width, cfg.depth, cfg.mlp_dim, cfg.heads, cfg.grid_size) == (1152, 27, 4304, 16, 27)
    for bad in ("Q/14", "L14", "L/x", "L/"):
        with pytest.raises(ValueError, match="So400m"):
            ViTConfig.from_name(bad, 224)


def test_large_model_parameter_count_on_meta_device() -> None:
    with torch.device("meta"):
        model = VisionTransformer(ViTConfig.from_name("L/14", 224), out_dim=1024)
    assert all(p.is_meta for p in model.parameters())
    assert 303e6 <= num_parameters(model) <= 305e6


def test_sincos_table_matches_hand_computation() -> None:
    table = posemb_sincos_2d(2, 2, 8)
    assert table.shape == (5, 8)
    assert torch.equal(table[0], torch.zeros(8))
    # width 8: frequencies 1 and 1e-4; row 3 is patch (y=1, x=0) after the class row.
    at_one = [math.sin(1.0), math.sin(1e-4), math.cos(1.0), math.cos(1e-4)]
    at_zero = [0.0, 0.0, 1.0, 1.0]
    torch.testing.assert_close(table[3], torch.tensor(at_zero + at_one))
    torch.testing.assert_close(table[2], torch.tensor(at_one + at_zero))


def test_resolution_change_regenerates_table_without_touching_buffer() -> None:
    model = make_vit("Pico/16", 32)
    stored = model.positional_embedding.clone()
    torch.testing.assert_close(model.position_table(3, 3), posemb_sincos_2d(3, 3, 128))
    x = torch.randn(2, 3, 48, 48)
    out = model(x)
    assert torch.equal(model.positional_embedding, stored)
    native = make_vit("Pico/16", 48, seed=1)
    weights = {k: v for k, v in model.state_dict().items() if k != "positional_embedding"}
    native.load_state_dict(weights, strict=False)
    torch.testing.assert_close(native(x).tokens, out.tokens)


def test_sdpa_attention_matches_naive_softmax() -> None:
    torch.manual_seed(0)
    attn = Attention(32, 4)
    with torch.no_grad():
        attn.in_proj_bias.normal_()
    x = torch.randn(2, 5, 32)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def heads(t: Tensor) -> Tensor:
        return t.view(2, 5, 4, 8).transpose(1, 2)

    for m in (None, mask):
        scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(8)
        if m is not None:
            scores = scores.masked_fill(~m, float("-inf"))
        naive = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(2, 5, 32)
        torch.testing.assert_close(attn(x, m), attn.out_proj(naive), atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        cfg = ViTConfig(variant="Pico", patch_size=16, image_size=32, grad_checkpointing=flag)
        model = VisionTransformer(cfg).train()
        model(x).tokens.square().mean().backward()
        grads.append(model.conv1.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def fabricated_open_clip_state_dict(model: VisionTransformer) -> dict[str, Tensor]:
    state = {f"visual.{k}": v.clone() for k, v in model.state_dict().items()}
    state.update(
        {
            "text.token_embedding.weight": torch.randn(40, 16),
            "text.transformer.resblocks.0.attn.in_proj_weight": torch.randn(48, 16),
            "logit_scale": torch.tensor(4.6),
        }
    )
    return state


def test_open_clip_state_dict_round_trip() -> None:
    source = make_vit("Pico/16", 32, out_dim=32, seed=0)
    x = torch.randn(2, 3, 32, 32)
    for strip_prefix in (False, True):
        state = fabricated_open_clip_state_dict(source)
        if strip_prefix:
            state = {k.removeprefix("visual."): v for k, v in state.items()}
        target = make_vit("Pico/16", 32, out_dim=32, seed=1)
        assert not torch.equal(target.conv1.weight, source.conv1.weight)
        load_open_clip_state_dict(target, state)
        torch.testing.assert_close(target(x).pooled, source(x).pooled)


def test_open_clip_loader_names_bad_keys_and_keeps_sincos(caplog: pytest.LogCaptureFixture) -> None:
    source = make_vit("Pico/16", 32)
    state = fabricated_open_clip_state_dict(source)
    del state["visual.transformer.resblocks.1.ln_2.weight"]
    with pytest.raises(ValueError, match=r"missing keys: transformer\.resblocks\.1\.ln_2\.weight"):
        load_open_clip_state_dict(make_vit(), state)

    state = fabricated_open_clip_state_dict(source)
    state["visual.conv1.weight"] = torch.randn(128, 3, 14, 14)
    with pytest.raises(ValueError, match=r"mis-shaped keys: conv1\.weight"):
        load_open_clip_state_dict(make_vit(), state)

    state = fabricated_open_clip_state_dict(source)
    state["visual.proj"] = torch.randn(128, 64)
    with pytest.raises(ValueError, match="unexpected keys: proj"):
        load_open_clip_state_dict(make_vit(), state)

    state = fabricated_open_clip_state_dict(source)
    state["visual.positional_embedding"] = torch.randn_like(source.positional_embedding)
    target = make_vit()
    with caplog.at_level(logging.WARNING, logger="mllm.encoders.vit"):
        load_open_clip_state_dict(target, state)
    assert "sin-cos" in caplog.text
    assert torch.equal(target.positional_embedding, posemb_sincos_2d(2, 2, 128))


# -------------------------------------------------------------------------------------- decoder


def make_decoder(mask: str, text_positions: bool = False, seed: int = 0) -> CaptionDecoder:
    torch.manual_seed(seed)
    config = CaptionDecoderConfig(
        variant="Pico", vocab_size=40, max_text_len=16, mask=mask, text_positions=text_positions
    )
    return CaptionDecoder(config, vision_width=24).eval()


def test_decoder_config_errors() -> None:
    with pytest.raises(ValueError, match="prefix"):
        CaptionDecoderConfig(mask="bidirectional")
    with pytest.raises(ValueError, match="Pico"):
        CaptionDecoderConfig(variant="XL")


@pytest.mark.parametrize("mask", ["causal", "prefix"])
def test_later_visual_token_reaches_earlier_visual_position_only_with_prefix_mask(mask: str) -> None:
    decoder = make_decoder(mask)
    visual, ids = torch.randn(1, 6, 24), torch.randint(3, 40, (1, 5))
    changed = visual.clone()
    changed[:, -1] += 1.0
    before, after = decoder.hidden_states(visual, ids), decoder.hidden_states(changed, ids)
    moved = not torch.allclose(before[:, 0], after[:, 0])
    assert moved == (mask == "prefix")
    assert not torch.allclose(before[:, 6:], after[:, 6:])


@pytest.mark.parametrize(("mask", "text_positions"), [("causal", False), ("prefix", True)])
def test_decoder_text_is_causal(mask: str, text_positions: bool) -> None:
    decoder = make_decoder(mask, text_positions)
    visual, ids = torch.randn(2, 6, 24), torch.randint(3, 40, (2, 8))
    changed = ids.clone()
    changed[:, 4] = (ids[:, 4] + 1 - 3) % 37 + 3
    before, after = decoder(visual, ids), decoder(visual, changed)
    assert before.shape == (2, 8, 40)
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_decoder_padding_mask_hides_padded_keys() -> None:
    decoder = make_decoder("causal")
    visual, ids = torch.randn(1, 4, 24), torch.randint(3, 40, (1, 6))
    changed = ids.clone()
    changed[:, 1] = (ids[:, 1] + 1 - 3) % 37 + 3
    padding = torch.zeros(1, 6, dtype=torch.bool)
    padding[:, 1] = True
    torch.testing.assert_close(decoder(visual, ids, padding)[:, 2:], decoder(visual, changed, padding)[:, 2:])
    assert not torch.allclose(decoder(visual, ids)[:, 2:], decoder(visual, changed)[:, 2:])


# ------------------------------------------------------------------------------------ objective


def test_objective_is_registered() -> None:
    assert OBJECTIVES.get("ov2") is OpenVision2Objective


def test_keep_random_tokens_draws_distinct_subsets() -> None:
    n, width = 49, 3
    tokens = torch.arange(n, dtype=torch.float32)[None, :, None].expand(8, n, width)
    kept = keep_random_tokens(tokens, 0.35)
    assert kept.shape == (8, int(n * 0.35), width)
    ids = kept[..., 0].long()
    assert all(len(set(row.tolist())) == ids.shape[1] for row in ids)
    assert len({tuple(sorted(row.tolist())) for row in ids}) > 1


def test_objective_keeps_subset_in_training_and_all_tokens_in_eval() -> None:
    objective = make_objective()
    seen: list[Tensor] = []
    objective.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    image = torch.randn(1, 3, 64, 64).expand(4, 3, 64, 64)
    batch = {"pixel_values": image, "caption_ids": captions([[5, 6]] * 4, 6)}
    n = (64 // 16) ** 2

    objective.train()
    out = objective(batch)
    assert seen[-1].shape[1] == int(n * 0.35) and out["kept_tokens"].item() == int(n * 0.35)
    full = objective.vision(image[:1]).tokens[0]
    for row in seen[-1]:
        assert all(torch.isclose(full, tok).all(dim=1).any() for tok in row)
    assert not torch.allclose(seen[-1][0], seen[-1][1])

    objective.eval()
    assert objective(batch)["kept_tokens"].item() == n
    assert seen[-1].shape[1] == n


def test_loss_ignores_pads_and_is_weighted() -> None:
    objective = make_objective().eval()
    images = torch.randn(2, 3, 64, 64)
    words = [[5, 9, 11], [7, 8, 12, 13, 30]]
    ids = captions(words, 9)
    out = objective({"pixel_values": images, "caption_ids": ids})
    torch.testing.assert_close(out["loss"], 2.0 * out["caption_loss"])

    logits = objective.decoder(objective.vision(images).tokens, ids[:, :-1])
    targets = ids[:, 1:]
    keep = targets != PAD
    assert keep.sum() == sum(len(w) + 1 for w in words)
    torch.testing.assert_close(out["caption_loss"], F.cross_entropy(logits[keep], targets[keep]))

    longer = objective({"pixel_values": images, "caption_ids": captions(words, 14)})
    torch.testing.assert_close(longer["loss"], out["loss"])

    other_pad = make_objective(seed=3, pad_id=37).eval()
    other_pad.load_state_dict(objective.state_dict())
    relabelled = other_pad({"pixel_values": images, "caption_ids": captions(words, 9, pad_id=37)})
    torch.testing.assert_close(relabelled["loss"], out["loss"])


def test_weight_decay_applies_to_weight_matrices_only() -> None:
    objective = make_objective(text_positions=True)
    no_decay = objective.no_weight_decay_names()
    params = dict(objective.named_parameters())
    assert no_decay <= set(params)
    embeddings = {"vision.class_embedding", "decoder.token_embedding.weight", "decoder.text_pos"}
    assert embeddings <= no_decay
    for name, param in params.items():
        decays = name not in no_decay
        assert decays == (param.ndim >= 2 and name not in embeddings), name
    assert "vision.conv1.weight" not in no_decay and "decoder.head.weight" not in no_decay


def test_generate_caption_is_greedy_and_stops_at_eos() -> None:
    objective = make_objective().eval()
    images = torch.randn(3, 3, 64, 64)
    out = objective.generate_caption(images, bos_id=BOS, eos_id=EOS, max_len=7)
    assert out.dtype == torch.long and out.shape[0] == 3 and 2 <= out.shape[1] <= 7
    assert torch.equal(out[:, 0], torch.full((3,), BOS))
    tokens = objective.vision(images).tokens
    first = objective.decoder(tokens, out[:, :1])[:, -1].argmax(-1)
    assert torch.equal(out[:, 1], first)
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])
