"""The three pretraining objectives (ov2, ov1, cappa) side by side, the ov1 batch, and `mllm flops`."""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tokenizers import BertWordPieceTokenizer
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mllm.cli import main
from mllm.data.images import ImageConfig
from mllm.data.shards import CaptionShards, ShardConfig, random_sentence
from mllm.encoders.cappa import CapPaConfig, CapPaObjective
from mllm.encoders.objective_options import ModelOptions, objective_config
from mllm.encoders.objectives import OBJECTIVES, OpenVision2Config, PretrainObjective
from mllm.encoders.openvision1 import (
    OpenVision1Config,
    OpenVision1Objective,
    QueryCaptionDecoder,
    dual_contrastive_loss,
)
from mllm.train_stages.pretrain import (
    PretrainConfig,
    build_optimizer,
    caption_tokenizer,
    pad_captions,
    text_row_tokenizer,
)
from mllm.train_stages.pretrain_config import OptimConfig

PAD, BOS, EOS, POOL = 0, 1, 2, 3
VOCAB, IMAGE, TEXT_LEN = 48, 32, 10
NAMES = ["ov2", "ov1", "cappa"]


def make(name: str, seed: int = 0, **overrides: object) -> PretrainObjective:
    torch.manual_seed(seed)
    options = {"image_size": IMAGE, **({"text_len": TEXT_LEN} if name == "ov1" else {}), **overrides}
    return OBJECTIVES.get(name)(objective_config(name, ModelOptions(**options)), vocab_size=VOCAB, pad_id=PAD)


def text_rows(rows: list[list[int]]) -> Tensor:
    """`[bos] words [eos] pad... [pool]`, TEXT_LEN ids a row."""
    out = torch.full((len(rows), TEXT_LEN), PAD, dtype=torch.long)
    for i, words in enumerate(rows):
        seq = [BOS, *words, EOS]
        out[i, : len(seq)] = torch.tensor(seq)
    out[:, -1] = POOL
    return out


def fixed_batch(size: int = 4, seed: int = 1) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    words = [torch.randint(4, VOCAB, (3 + i % 3,), generator=generator).tolist() for i in range(size)]
    captions = torch.full((size, 9), PAD, dtype=torch.long)
    for i, row in enumerate(words):
        captions[i, : len(row) + 2] = torch.tensor([BOS, *row, EOS])
    return {
        "pixel_values": torch.randn(size, 3, IMAGE, IMAGE, generator=generator),
        "caption_ids": captions,
        "web_ids": text_rows([row[:2] for row in words]),
        "sentence_ids": text_rows([row[1:] for row in words]),
    }


# ------------------------------------------------------------------------------------- all three


def test_objectives_are_registered_with_their_configs() -> None:
    assert {"ov2", "ov1", "cappa"} <= set(OBJECTIVES.names())
    assert OBJECTIVES.get("ov1").config_class is OpenVision1Config
    assert OBJECTIVES.get("cappa").config_class is CapPaConfig
    assert OBJECTIVES.get("ov2").config_class is OpenVision2Config


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_a_finite_loss_and_gradients_reach_the_encoder(name: str) -> None:
    objective = make(name).train()
    out = objective(fixed_batch())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for param in (objective.encoder.conv1.weight, objective.encoder.transformer.resblocks[0].attn.in_proj_weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_on_a_fixed_batch(name: str) -> None:
    objective = make(name).train()
    batch = fixed_batch()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss = objective(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.6 * losses[0], losses[::5]


@pytest.mark.parametrize("name", NAMES)
def test_encoder_lr_scale_sets_the_towers_lr_and_keeps_each_parameters_decay(name: str) -> None:
    objective = make(name).train()
    optimizer = build_optimizer(objective, OptimConfig(weight_decay=0.2, encoder_lr_scale=0.25), lr=1e-3)
    tower = {id(p) for p in objective.encoder.parameters()}
    no_decay = {id(p) for n, p in objective.named_parameters() if n in objective.no_weight_decay_names()}
    seen = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in objective.parameters() if p.requires_grad)
    for group in optimizer.param_groups:
        in_tower = {id(p) in tower for p in group["params"]}
        assert len(in_tower) == 1
        assert group["lr"] == pytest.approx(2.5e-4 if in_tower.pop() else 1e-3)
        assert {id(p) in no_decay for p in group["params"]} == {group["weight_decay"] == 0.0}

    frozen = build_optimizer(objective, OptimConfig(encoder_lr_scale=0.0), lr=1e-2)
    before = {n: p.detach().clone() for n, p in objective.named_parameters()}
    objective(fixed_batch())["loss"].backward()
    frozen.step()
    moved = {n for n, p in objective.named_parameters() if not torch.equal(p, before[n])}
    assert moved and not any(id(p) in tower for n, p in objective.named_parameters() if n in moved)


def test_model_options_read_the_demo_section_and_refuse_another_objectives_options() -> None:
    demo = yaml.safe_load(Path("configs/demo.yaml").read_text())["pretrain"]
    options = ModelOptions(**demo["model"])
    config = objective_config(demo["objective"], options)
    assert type(config) is OpenVision2Config
    assert (config.vit, config.keep_ratio, config.max_text_len) == ("Pico/32", 0.35, 96)
    assert PretrainConfig(objective="ov2", model=options).model is options

    ov1 = objective_config("ov1", ModelOptions(vit="Pico/32", text_len=20))
    assert type(ov1) is OpenVision1Config and (ov1.vit, ov1.text_len) == ("Pico/32", 20)
    with pytest.raises(ValueError, match="keep_ratio"):
        objective_config("ov1", ModelOptions(keep_ratio=0.5))
    with pytest.raises(ValueError, match="parallel_fraction"):
        objective_config("ov2", ModelOptions(parallel_fraction=0.5))
    with pytest.raises(KeyError, match="available"):
        objective_config("clip", options)


# ---------------------------------------------------------------------------------------------- ov1


def _hand_infonce(sim: list[list[float]]) -> float:
    """Mean over rows of -log softmax(row)[diagonal]."""
    return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(sim)) / len(sim)


def test_dual_contrastive_loss_matches_a_hand_computation() -> None:
    image = [[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]]
    web = [[2.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]
    sentence = [[1.0, 1.0], [1.0, -1.0], [0.0, -3.0]]
    scale = 5.0

    def unit(v: list[float]) -> list[float]:
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    total = 0.0
    for text in (web, sentence):
        sim = [[scale * sum(a * b for a, b in zip(unit(i), unit(t), strict=True)) for t in text] for i in image]
        transposed = [list(col) for col in zip(*sim, strict=True)]
        total += _hand_infonce(sim) + _hand_infonce(transposed)
    expected = total / 4

    got = dual_contrastive_loss(torch.tensor(image), torch.tensor(web), torch.tensor(sentence), torch.tensor(scale))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def _contrastive_on_one_rank(rank: int, init_file: str, rows: dict[str, Tensor], out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    half = {k: v.chunk(2)[rank].clone().requires_grad_(k == "image") for k, v in rows.items()}
    loss = dual_contrastive_loss(half["image"], half["web"], half["sentence"], torch.tensor(4.0))
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": half["image"].grad}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_dual_contrastive_loss_uses_every_ranks_rows_as_negatives(tmp_path: Path) -> None:
    """Two gloo ranks holding half a batch each: the mean of their losses is the whole batch's loss, and each
    rank's image gradient is its share of the whole batch's gradient (negatives cross ranks, as CLIP's)."""
    torch.manual_seed(0)
    rows = {k: torch.randn(6, 5) for k in ("image", "web", "sentence")}
    out = str(tmp_path / "rank")
    torch.multiprocessing.spawn(_contrastive_on_one_rank, args=(str(tmp_path / "init"), rows, out), nprocs=2)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    image = rows["image"].clone().requires_grad_(True)
    whole = dual_contrastive_loss(image, rows["web"], rows["sentence"], torch.tensor(4.0))
    whole.backward()
    assert (ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 == pytest.approx(whole.item(), rel=1e-5)
    # The gather sends each rank the gradient of both ranks' losses; DDP's mean over the two ranks then
    # gives the whole batch's gradient.
    local = torch.cat([ranks[0]["grad"], ranks[1]["grad"]])
    assert torch.allclose(local / 2, image.grad, atol=1e-6)


def test_ov1_objective_combines_contrastive_and_caption_losses() -> None:
    objective = make("ov1").eval()
    assert isinstance(objective, OpenVision1Objective)
    batch = fixed_batch(size=3)
    out = objective(batch)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    torch.testing.assert_close(out["loss"], out["contrastive_loss"] + 2.0 * out["caption_loss"])

    image = objective.vision(batch["pixel_values"]).pooled
    web = objective.text(batch["web_ids"]).pooled
    sentence = objective.text(batch["sentence_ids"]).pooled
    reference = dual_contrastive_loss(image, web, sentence, torch.tensor(1 / 0.07))
    torch.testing.assert_close(out["contrastive_loss"], reference)


def test_ov1_text_encoder_pools_its_last_position_and_sees_the_whole_row() -> None:
    text = make("ov1").eval().text
    rows = text_rows([[5, 6, 7]])
    changed = rows.clone()
    changed[0, 1] = 9
    base, other = text(rows), text(changed)
    # Bidirectional: a change at position 1 reaches position 0 and the pooled last position.
    assert not torch.allclose(base.tokens[0, 0], other.tokens[0, 0])
    torch.testing.assert_close(base.pooled, text.text_projection(base.tokens[:, -1]))
    with pytest.raises(ValueError, match="rows of"):
        text(rows[:, :-1])


def test_ov1_query_decoder_mask_and_causal_queries() -> None:
    mask = QueryCaptionDecoder.attention_mask(3, 4, torch.device("cpu"))
    assert mask[:3, :3].all() and not mask[:3, 3:].any()  # the prefix never sees the queries
    assert mask[3:, :3].all() and torch.equal(mask[3:, 3:], torch.ones(4, 4, dtype=torch.bool).tril())

    torch.manual_seed(0)
    decoder = QueryCaptionDecoder("Pico", VOCAB, num_queries=6, vision_width=16, text_width=24).eval()
    visual, text = torch.randn(2, 5, 16), torch.randn(2, 4, 24)
    # Causal queries: the first three give the same logits whether or not later queries run.
    torch.testing.assert_close(decoder(visual, text, 3), decoder(visual, text, 6)[:, :3])
    with pytest.raises(ValueError, match="exceed"):
        decoder(visual, text, 7)


# -------------------------------------------------------------------------------------------- cappa


def test_cappa_parallel_rows_are_the_configured_share() -> None:
    for fraction, expected in [(0.75, 6), (0.0, 0), (1.0, 8), (0.5, 4)]:
        objective = make("cappa", parallel_fraction=fraction)
        assert isinstance(objective, CapPaObjective)
        rows = objective.parallel_rows(8, torch.device("cpu"))
        assert rows.dtype == torch.bool and int(rows.sum()) == expected
    objective = make("cappa")
    draws = {tuple(objective.parallel_rows(8, torch.device("cpu")).tolist()) for _ in range(20)}
    assert len(draws) > 1


def test_cappa_parallel_rows_get_masked_inputs_and_no_causal_mask() -> None:
    objective = make("cappa").train()
    seen: list[Tensor] = []
    objective.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    batch = fixed_batch(size=8)
    out = objective(batch)
    parallel = seen[-1]
    assert int(parallel.sum()) == 6 and out["parallel_share"].item() == 0.75

    decoder = objective.decoder.eval()
    visual = torch.randn(8, 4, objective.encoder.config.width)
    ids = batch["caption_ids"][:, :-1]
    base = decoder(visual, ids, parallel)
    # Parallel rows never read their input ids; teacher-forced rows do.
    changed = ids.clone()
    changed[:, 1] = (changed[:, 1] + 1) % VOCAB
    moved = decoder(visual, changed, parallel)
    torch.testing.assert_close(moved[parallel], base[parallel])
    assert not torch.allclose(moved[~parallel][:, 1:], base[~parallel][:, 1:])
    torch.testing.assert_close(moved[~parallel][:, :1], base[~parallel][:, :1])
    # Parallel rows attend later positions: position 0 reacts to a later position's embedding.
    with torch.no_grad():
        decoder.text_pos[3] += 1.0
    later = decoder(visual, ids, parallel)
    assert not torch.allclose(later[parallel][:, 0], base[parallel][:, 0])
    torch.testing.assert_close(later[~parallel][:, :3], base[~parallel][:, :3])

    objective.eval()
    objective(batch)
    assert not seen[-1].any()


# --------------------------------------------------------------------------------------- ov1 data


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (30, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_shards_give_ov1_the_web_caption_and_a_random_sentence(tmp_path: Path) -> None:
    dense = "A red circle. A blue sign says stop! Two bars"
    with tarfile.open(tmp_path / "shard-00000.tar", "w") as tar:
        for suffix, payload in [("jpg", _jpeg()), ("txt", dense.encode()),
                                ("json", json.dumps({"org_caption": "red circle photo"}).encode())]:
            info = tarfile.TarInfo(f"k0.{suffix}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    texts: list[str] = []

    def record(text: str) -> Tensor:
        texts.append(text)
        return torch.tensor([len(texts)])

    cfg = ShardConfig(shards=str(tmp_path), shuffle_buffer=1)
    plain = next(iter(CaptionShards(cfg, ImageConfig(size=16), record, train=False)))
    assert set(plain) == {"pixel_values", "caption_ids"} and texts == [dense]

    texts.clear()
    dataset = CaptionShards(cfg, ImageConfig(size=16), record, train=True, text_tokenize=record)
    items = list(itertools.islice(dataset, 12))
    assert set(items[0]) == {"pixel_values", "caption_ids", "web_ids", "sentence_ids"}
    captions, webs, sentences = texts[0::3], texts[1::3], texts[2::3]
    assert set(captions) == {dense} and set(webs) == {"red circle photo"}
    assert set(sentences) == {"A red circle", "A blue sign says stop", "Two bars"}


def test_random_sentence_and_text_rows(tiny_world: Path) -> None:
    rng = random.Random(0)
    assert {random_sentence("One. Two? Three!", rng) for _ in range(30)} == {"One", "Two", "Three"}
    assert random_sentence("no stop at all", rng) == "no stop at all"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_world / "tokenizer")
    tokenize = text_row_tokenizer(tokenizer, 12)
    row = tokenize("a red circle")
    pool = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.eos_token_id
    assert row.shape == (12,) and row[0] == tokenizer.bos_token_id and row[-1] == pool
    words = tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    assert row[1 : 1 + len(words)].tolist() == words and row[1 + len(words)] == tokenizer.eos_token_id
    assert (row[2 + len(words) : -1] == tokenizer.pad_token_id).all()
    assert tokenize(" ".join(["circle"] * 40)).shape == (12,)

    batch = pad_captions([{"pixel_values": torch.zeros(3, 2, 2), "caption_ids": torch.tensor([1, 5, 2]),
                           "web_ids": row, "sentence_ids": row},
                          {"pixel_values": torch.zeros(3, 2, 2), "caption_ids": torch.tensor([1, 2]),
                           "web_ids": row, "sentence_ids": row}], pad_id=0)
    assert batch["caption_ids"].tolist() == [[1, 5, 2], [1, 2, 0]] and batch["web_ids"].shape == (2, 12)


def test_pretrain_with_ov1_writes_an_encoder(tmp_path: Path, tiny_world: Path) -> None:
    out = tmp_path / "ov1"
    main(["pretrain", "--out", str(out), "--tokenizer", str(tiny_world / "tokenizer"),
          "--data.shards", str(tiny_world / "shards"), "--objective", "ov1", "--model.vit", "Pico/16",
          "--model.image_size", "32", "--model.text-len", "24", "--model.max_text_len", "64",
          "--batch_size", "4", "--samples", "12", "--log_every", "1"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "ov1" and summary["steps"] == 3 and summary["skipped_samples"] == 0
    assert (out / "encoder" / "model.safetensors").is_file()
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"contrastive_loss", "caption_loss", "logit_scale"} <= set(record)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["objective"] == "ov1" and saved["model"]["text_len"] == 24


def test_pretrain_refuses_an_option_of_another_objective(tmp_path: Path, tiny_world: Path) -> None:
    with pytest.raises(SystemExit, match="keep_ratio"):
        main(["pretrain", "--out", str(tmp_path / "o"), "--tokenizer", str(tiny_world / "tokenizer"),
              "--data.shards", str(tiny_world / "shards"), "--objective", "cappa", "--model.keep_ratio", "0.5"])


# -------------------------------------------------------------------------------------------- flops


def flops(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    main(["flops", *args, "--json"])
    return json.loads(capsys.readouterr().out)


def test_flops_of_ov2_l14_match_the_paper_counting_forward_only(capsys: pytest.CaptureFixture[str]) -> None:
    report = flops(capsys, "--objective", "ov2", "--vit", "L/14", "--resolution", "224", "--decoder", "L")
    paper = report["paper"]
    assert paper["gflops_per_image"] == 208.90
    assert abs(report["forward_gflops_per_image"] / 208.90 - 1) < 0.02
    # A training step is about three forward passes (the patch embedding needs no input gradient).
    assert 2.9 < report["gflops_per_image"] / report["forward_gflops_per_image"] < 3.0
    parts = report["breakdown"]
    assert set(parts) == {"encoder", "decoder", "other"}
    assert sum(p["train"] for p in parts.values()) == pytest.approx(report["gflops_per_image"], abs=0.05)
    assert parts["encoder"]["forward"] > parts["decoder"]["forward"] > 0


def test_flops_scale_with_keep_ratio_and_objective(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--vit", "Pico/16", "--resolution", "96", "--decoder", "Pico", "--text", "Pico"]
    kept = flops(capsys, "--objective", "ov2", *common, "--keep-ratio", "0.35")
    full = flops(capsys, "--objective", "ov2", *common, "--keep_ratio", "1.0")
    ov1 = flops(capsys, "--objective", "ov1", *common)
    cappa = flops(capsys, "--objective", "cappa", *common)
    assert kept["gflops_per_image"] < full["gflops_per_image"] < ov1["gflops_per_image"]
    # The keep ratio acts after the encoder; ov1's encoder only adds its small embedding projection.
    assert kept["breakdown"]["encoder"] == full["breakdown"]["encoder"]
    assert ov1["breakdown"]["encoder"]["train"] == pytest.approx(kept["breakdown"]["encoder"]["train"], rel=1e-3)
    assert ov1["breakdown"]["text_encoder"]["train"] > 0 and "text_encoder" not in cappa["breakdown"]
    assert "paper" not in kept
    # Twice the resolution: 145 instead of 37 tokens, and attention grows with their square.
    larger = flops(capsys, "--objective", "ov2", *common[:2], "--resolution", "192", *common[4:])
    assert 145 / 37 < larger["breakdown"]["encoder"]["train"] / kept["breakdown"]["encoder"]["train"] < 5.0


def test_a_bert_style_wordpiece_tokenizer_frames_captions_with_cls_and_sep(tmp_path: Path) -> None:
    """The paper tokenizes with bert-base-uncased: lower-cased WordPiece, [CLS] and [SEP] instead of bos/eos."""
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(["a red star at the top left", "two objects: a blue ring"] * 20, vocab_size=200,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece._tokenizer, pad_token="[PAD]",
                                        unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = caption_tokenizer(loaded, 16)("A Red STAR")
    assert ids[0] == loaded.cls_token_id and ids[-1] == loaded.sep_token_id
    assert loaded.convert_ids_to_tokens(ids[1:-1].tolist()) == ["a", "red", "star"]
    row = text_row_tokenizer(loaded, 8)("a blue ring")
    assert row.tolist()[:5] == [loaded.cls_token_id, *loaded.convert_tokens_to_ids(["a", "blue", "ring"]),
                                loaded.sep_token_id]
    assert row.tolist()[5:] == [loaded.pad_token_id, loaded.pad_token_id, loaded.cls_token_id]
