"""AnyRes (LLaVA-NeXT): tiling, canvas choice, token counts and feature packing against transformers' own
LlavaNext functions; the AnyRes VLM through data, training stages, save/load, evaluation and HF export."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaNextForConditionalGeneration, LlavaNextProcessor
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextModel,
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from mllm.data.anyres import AnyResLayout, best_resolution, default_pinpoints, unpadded_shape
from mllm.data.conversation import ConversationError, encode_prompt, expand_images
from mllm.data.images import ImageConfig
from mllm.data.llava_json import ConversationDataset, collate
from mllm.encoders.tower import EncoderConfig, build_tower, save_encoder
from mllm.encoders.vit import VisionTransformer, ViTConfig
from mllm.eval.runner import Answerer
from mllm.llm import IMAGE_TOKEN, LLMConfig, build_llm, load_tokenizer
from mllm.train_stages.stages import StageConfig, TrainConfig
from mllm.train_stages.vlm_trainer import set_image_aspect, train
from mllm.vlm import NEWLINE, VisionLanguageModel

TILE, SIDE = 32, 2  # the pico tower: 32-pixel input, 16-pixel patches
LLM = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2, "intermediate_size": 128}
# (tile size, tokens per tile side, pinpoints): LLaVA-NeXT's 336/14 CLIP, a 384/14 SigLIP-like grid, the pico
# tower with defaults, and a custom set with a one-tile canvas and a non-square tile grid.
LAYOUTS = [
    (336, 24, default_pinpoints(336)),
    (384, 27, [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152], [1152, 1152]]),
    (TILE, SIDE, default_pinpoints(TILE)),
    (TILE, SIDE, [[32, 32], [64, 96], [96, 64], [32, 128]]),
]


def _sizes(count: int, largest: int, seed: int) -> list[tuple[int, int]]:
    """(width, height)s: extremes, exact canvases and their neighbours, then random aspect ratios."""
    rng = random.Random(seed)
    fixed = [(1, 1), (1, largest), (largest, 1), (largest, largest), (336, 672), (672, 336), (671, 337), (673, 335),
             (1008, 336), (335, 1009), (64, 64), (96, 32), (33, 97)]
    return fixed + [(rng.randint(1, largest), rng.randint(1, largest)) for _ in range(count)]


def _random_image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _hf_image_processor(tile: int, pinpoints: list[list[int]], cfg: ImageConfig) -> LlavaNextImageProcessorPil:
    side = {"height": tile, "width": tile}
    return LlavaNextImageProcessorPil(size=side, crop_size=side, do_center_crop=False, image_grid_pinpoints=pinpoints,
                                      resample=Image.BILINEAR, image_mean=list(cfg.mean), image_std=list(cfg.std))


@pytest.mark.parametrize(("tile", "side", "pinpoints"), LAYOUTS)
def test_canvas_choice_and_tile_counts_equal_transformers(tile: int, side: int, pinpoints: list[list[int]]) -> None:
    layout = AnyResLayout.create(pinpoints, tile, side)
    for width, height in _sizes(400, 3000, seed=tile):
        canvas = best_resolution(width, height, pinpoints)
        assert canvas == select_best_resolution((height, width), pinpoints), (width, height)
        assert layout.grid_shape(width, height) == get_anyres_image_grid_shape((height, width), pinpoints, tile)
        assert layout.num_tiles(width, height) == image_size_to_num_patches((height, width), pinpoints, tile)


@pytest.mark.parametrize(("tile", "side", "pinpoints"), LAYOUTS)
def test_token_counts_equal_the_llava_next_processor(tiny_world: Path, tile: int, side: int,
                                                     pinpoints: list[list[int]]) -> None:
    tokenizer = load_tokenizer(LLMConfig(tokenizer=str(tiny_world / "tokenizer")))
    processor = LlavaNextProcessor(image_processor=_hf_image_processor(tile, pinpoints, ImageConfig(size=tile)),
                                   tokenizer=tokenizer, patch_size=tile // side, image_token=IMAGE_TOKEN,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    layout = AnyResLayout.create(pinpoints, tile, side)
    sizes = _sizes(300, 3000, seed=tile + 1)
    theirs = processor._get_num_multimodal_tokens(image_sizes=[(h, w) for w, h in sizes]).num_image_tokens
    assert [layout.num_image_tokens(w, h) for w, h in sizes] == theirs


def test_the_processor_expands_image_tokens_as_we_count_them(tiny_world: Path) -> None:
    tokenizer = load_tokenizer(LLMConfig(tokenizer=str(tiny_world / "tokenizer")))
    processor = LlavaNextProcessor(image_processor=_hf_image_processor(TILE, default_pinpoints(TILE),
                                                                       ImageConfig(size=TILE)),
                                   tokenizer=tokenizer, patch_size=TILE // SIDE, image_token=IMAGE_TOKEN,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    layout = AnyResLayout.create(None, TILE, SIDE)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for width, height in [(75, 20), (20, 75), (50, 47), (130, 40)]:
        out = processor(images=_random_image(width, height, 0), text=IMAGE_TOKEN + " hi", return_tensors="pt")
        assert int((out["input_ids"] == image_id).sum()) == layout.num_image_tokens(width, height)


@pytest.mark.parametrize(("tile", "pinpoints"), [(TILE, default_pinpoints(TILE)), (TILE, LAYOUTS[3][2]),
                                                 (56, default_pinpoints(56))])
def test_tiles_equal_the_llava_next_image_processor(tile: int, pinpoints: list[list[int]]) -> None:
    cfg = ImageConfig(size=tile)
    processor = _hf_image_processor(tile, pinpoints, cfg)
    layout = AnyResLayout.create(pinpoints, tile, 2)
    for index, (width, height) in enumerate(_sizes(12, 260, seed=tile)[1:]):
        image = _random_image(width, height, index)
        theirs = processor(image, return_tensors="pt")
        ours = layout.tiles(image, cfg)
        assert ours.shape == (layout.num_tiles(width, height), 3, tile, tile)
        assert torch.allclose(ours, theirs["pixel_values"][0], atol=1e-6), (width, height)
        assert theirs["image_sizes"][0].tolist() == [height, width]


def test_overview_ignores_pad_to_square_and_tile_size_must_match() -> None:
    layout = AnyResLayout.create(None, TILE, SIDE)
    image = _random_image(70, 30, 1)
    padded = layout.tiles(image, ImageConfig(size=TILE, pad_to_square=True))
    assert torch.equal(padded, layout.tiles(image, ImageConfig(size=TILE)))
    with pytest.raises(ValueError, match="image size 64 differs from the AnyRes tile size 32"):
        layout.tiles(image, ImageConfig(size=64))
    with pytest.raises(ValueError, match=r"grid pinpoint \[32, 48\] is not a positive \[height, width\] multiple"):
        AnyResLayout.create([[32, 48]], TILE, SIDE)


@pytest.mark.parametrize(("tile", "side", "pinpoints"), LAYOUTS[1:])
def test_packing_equals_pack_image_features(tile: int, side: int, pinpoints: list[list[int]]) -> None:
    layout = AnyResLayout.create(pinpoints, tile, side)
    config = SimpleNamespace(vision_config=SimpleNamespace(image_size=tile, patch_size=tile // side),
                             image_grid_pinpoints=pinpoints)
    reference = SimpleNamespace(config=config)  # pack_image_features reads nothing else of the model
    generator = torch.Generator().manual_seed(0)
    newline = torch.randn(8, generator=generator)
    for width, height in _sizes(40, 2000, seed=side):
        features = torch.randn(layout.num_tiles(width, height), side * side, 8, generator=generator)
        ours = layout.pack(features, width, height, newline)
        (theirs,), lengths = LlavaNextModel.pack_image_features(reference, [features], torch.tensor([[height, width]]),
                                                                "default", newline)
        assert torch.equal(ours, theirs), (width, height)
        assert ours.shape[0] == layout.num_image_tokens(width, height) == int(lengths[0])
        rows, cols = layout.grid_shape(width, height)
        grid = torch.zeros(1, rows * side, cols * side)
        assert unpadded_shape(rows * side, cols * side, width, height) == tuple(
            unpad_image(grid, (height, width)).shape[1:])
    with pytest.raises(ValueError, match="do not fit a"):
        layout.pack(torch.zeros(7, side * side, 8), 10, 10, newline)


def test_expand_images_takes_one_count_per_image() -> None:
    ids, labels = [1, 9, 2, 9, 3], [1, 9, 2, 9, 3]
    out, out_labels = expand_images(ids, labels, 9, [2, 3])
    assert out == [1, 9, 9, 2, 9, 9, 9, 3] and out_labels == [1, -100, -100, 2, -100, -100, -100, 3]
    assert expand_images(ids, labels, 9, 2)[0] == [1, 9, 9, 2, 9, 9, 3]
    with pytest.raises(ConversationError, match="1 image token counts for 2 <image> markers"):
        expand_images(ids, labels, 9, [2])


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("encoder")
    save_encoder(VisionTransformer(ViTConfig("Pico", patch_size=16, image_size=TILE)), ImageConfig(size=TILE), out)
    return out


def _vlm(encoder_dir: Path, tiny_world: Path, use_cls: bool = False) -> tuple[VisionLanguageModel, object]:
    torch.manual_seed(0)
    cfg = LLMConfig(tokenizer=str(tiny_world / "tokenizer"), **LLM)
    tokenizer = load_tokenizer(cfg)
    tower = build_tower(EncoderConfig(path=str(encoder_dir), use_cls=use_cls))
    return VisionLanguageModel.assemble(tower, "mlp2x_gelu", build_llm(cfg, tokenizer), tokenizer).eval(), tokenizer


@pytest.fixture(scope="module")
def anyres_vlm(encoder_dir: Path, tiny_world: Path) -> tuple[VisionLanguageModel, object]:
    model, tokenizer = _vlm(encoder_dir, tiny_world)
    model.enable_anyres()
    return model, tokenizer


def test_enabling_anyres_adds_a_newline_to_the_connector(encoder_dir: Path, tiny_world: Path) -> None:
    model, _ = _vlm(encoder_dir, tiny_world)
    assert model.anyres is None and NEWLINE not in model.connector.state_dict()
    model.enable_anyres([[32, 64], [64, 32]])
    newline = model.connector.get_parameter(NEWLINE)
    assert newline.shape == (64,) and 0.5 < float(newline.detach().norm()) < 1.5  # randn / sqrt(width): norm about 1
    assert model.anyres.grid_pinpoints == ((32, 64), (64, 32))
    model.enable_anyres(None)  # switching pinpoints keeps the learned newline
    assert model.connector.get_parameter(NEWLINE) is newline and len(model.grid_pinpoints) == 5
    with_cls, _ = _vlm(encoder_dir, tiny_world, use_cls=True)
    with pytest.raises(ValueError, match="AnyRes needs a square grid of patch tokens .* gives 5 tokens"):
        with_cls.enable_anyres()


def test_anyres_features_land_on_the_placeholders_as_llava_next_packs_them(anyres_vlm) -> None:
    model, tokenizer = anyres_vlm
    images = [_random_image(90, 25, 1), _random_image(30, 70, 2)]
    pixels, sizes, counts = model.preprocess_images(images)
    assert sizes.tolist() == [[25, 90], [70, 30]] and counts == [model.anyres.num_image_tokens(90, 25),
                                                                 model.anyres.num_image_tokens(30, 70)]
    prompts = [encode_prompt(tokenizer, IMAGE_TOKEN + "\nWhat is it?", "chat", [count]) for count in counts]
    ids = torch.tensor([prompts[0] + prompts[1]])  # both images in one sequence, in order
    with torch.no_grad():
        embeds = model.embed(ids, pixels, sizes)
        features = model.connector(model.tower(pixels))
        per_image = features.split([model.anyres.num_tiles(90, 25), model.anyres.num_tiles(30, 70)])
        config = SimpleNamespace(vision_config=SimpleNamespace(image_size=TILE, patch_size=16),
                                 image_grid_pinpoints=model.grid_pinpoints)
        packed, _ = LlavaNextModel.pack_image_features(SimpleNamespace(config=config), list(per_image), sizes,
                                                       "default", model.connector.image_newline)
    is_image = ids[0] == model.image_token_id
    assert torch.allclose(embeds[0, is_image], torch.cat(packed), atol=1e-6)
    assert torch.equal(embeds[0, ~is_image], model.llm.get_input_embeddings()(ids)[0, ~is_image])
    with pytest.raises(ValueError, match="needs image_sizes"):
        model.embed(ids, pixels)
    with pytest.raises(ValueError, match="tiles given for images of sizes"):
        model.embed(ids, pixels[1:], sizes)
    with pytest.raises(ValueError, match="image placeholder tokens for AnyRes images of"):
        model.embed(ids[:, : len(prompts[0])], pixels, sizes)


@pytest.fixture(scope="module")
def anyres_data(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 instruction samples whose images are crops of the world's, in four aspect ratios."""
    out = tmp_path_factory.mktemp("anyres_data")
    (out / "images").mkdir()
    records = json.loads((tiny_world / "stage_data" / "instruct.json").read_text())[:16]
    for index, record in enumerate(records):
        width, height = [(96, 96), (96, 40), (40, 96), (80, 56)][index % 4]
        with Image.open(tiny_world / "images" / record["image"]) as image:
            image.crop((0, 0, width, height)).save(out / "images" / f"{index}.png")
        record["image"] = f"{index}.png"
    (out / "data.json").write_text(json.dumps(records))
    return out


def test_dataset_counts_positions_per_image_and_collates_tiles(anyres_vlm, anyres_data: Path) -> None:
    model, tokenizer = anyres_vlm
    layout = model.anyres
    dataset = ConversationDataset(anyres_data / "data.json", anyres_data / "images", tokenizer, model.tower.image,
                                  "chat", model.num_image_tokens, 512, strict=True, anyres=layout)
    sizes = [(96, 96), (96, 40), (40, 96), (80, 56)]
    for index, (width, height) in enumerate(sizes):
        ids = dataset.samples[index].input_ids
        assert ids.count(model.image_token_id) == layout.num_image_tokens(width, height)
    batch = collate([dataset[i] for i in range(4)], tokenizer.pad_token_id)
    assert batch["image_sizes"].tolist() == [[h, w] for w, h in sizes]
    assert batch["pixel_values"].shape == (sum(layout.num_tiles(w, h) for w, h in sizes), 3, TILE, TILE)
    with torch.no_grad():
        loss = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                     image_sizes=batch["image_sizes"]).loss
    assert torch.isfinite(loss)
    fixed = ConversationDataset(anyres_data / "data.json", anyres_data / "images", tokenizer, model.tower.image,
                                "chat", model.num_image_tokens, 512, strict=True)
    fixed_batch = collate([fixed[i] for i in range(4)], tokenizer.pad_token_id)
    assert "image_sizes" not in fixed_batch and fixed_batch["pixel_values"].shape == (4, 3, TILE, TILE)
    assert fixed.samples[1].input_ids.count(model.image_token_id) == model.num_image_tokens


def test_stage_image_aspect_is_validated_and_anyres_is_never_dropped(encoder_dir: Path, tiny_world: Path) -> None:
    with pytest.raises(ValueError, match="unknown image_aspect 'tiles'"):
        StageConfig(image_aspect="tiles")
    with pytest.raises(ValueError, match="grid_pinpoints need image_aspect 'anyres'"):
        StageConfig(grid_pinpoints=[[32, 64]])
    model, _ = _vlm(encoder_dir, tiny_world)
    set_image_aspect(model, StageConfig(pad_to_square=False))
    assert model.tower.image.pad_to_square is False and model.anyres is None
    set_image_aspect(model, StageConfig(image_aspect="pad", pad_to_square=False))
    assert model.tower.image.pad_to_square is True
    set_image_aspect(model, StageConfig(image_aspect="anyres", grid_pinpoints=[[64, 64]]))
    assert model.grid_pinpoints == [[64, 64]]
    set_image_aspect(model, StageConfig())  # unset: stays AnyRes, pinpoints kept
    assert model.grid_pinpoints == [[64, 64]]
    with pytest.raises(ValueError, match="the model is AnyRes .* image_aspect 'resize' cannot switch it back"):
        set_image_aspect(model, StageConfig(image_aspect="resize"))


@pytest.fixture(scope="module")
def trained(encoder_dir: Path, tiny_world: Path, anyres_data: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two stages: the first switches a fresh model to AnyRes, the second (aspect unset) keeps it."""
    out = tmp_path_factory.mktemp("anyres_train")
    data = {"data": str(anyres_data / "data.json"), "image_folder": str(anyres_data / "images"), "batch_size": 4,
            "max_steps": 3, "lr": 1e-2, "group_by_length": False}
    cfg = TrainConfig(out=str(out), encoder=EncoderConfig(path=str(encoder_dir)),
                      llm=LLMConfig(tokenizer=str(tiny_world / "tokenizer"), **LLM), report_to=[], progress=False,
                      logging_steps=1, stages=[
                          StageConfig(name="next", train=["connector"], image_aspect="anyres", **data),
                          StageConfig(name="tune", train=["connector", "llm"], **data),
                      ])
    return train(cfg)


def test_anyres_stages_train_the_newline_and_keep_the_mode(trained: dict) -> None:
    first, second = trained["stages"]
    assert first["steps"] == second["steps"] == 3 and first["skipped"] == 0
    folders = [Path(stage["model"]) for stage in trained["stages"]]
    configs = [json.loads((folder / "mllm_config.json").read_text()) for folder in folders]
    assert configs[0]["anyres"] == configs[1]["anyres"] == {"grid_pinpoints": default_pinpoints(TILE)}
    newlines = [load_file(str(folder / "connector.safetensors"))[NEWLINE] for folder in folders]
    assert newlines[0].shape == (64,) and not torch.allclose(newlines[0], newlines[1])


def test_anyres_model_survives_save_and_load_exactly(trained: dict, tmp_path: Path) -> None:
    model, tokenizer = VisionLanguageModel.from_pretrained(Path(trained["model"]))
    model.eval()
    saved = load_file(str(Path(trained["model"]) / "connector.safetensors"))[NEWLINE]
    assert torch.equal(model.connector.get_parameter(NEWLINE).detach(), saved)
    model.save_pretrained(tmp_path / "again", tokenizer)
    again, _ = VisionLanguageModel.from_pretrained(tmp_path / "again")
    again.eval()
    pixels, sizes, counts = model.preprocess_images([_random_image(77, 31, 3)])
    ids = torch.tensor([encode_prompt(tokenizer, IMAGE_TOKEN + "\nDescribe it.", "chat", counts)])
    with torch.no_grad():
        a = model(ids, torch.ones_like(ids), pixels, image_sizes=sizes).logits
        b = again(ids, torch.ones_like(ids), pixels, image_sizes=sizes).logits
    assert torch.equal(a, b) and again.grid_pinpoints == model.grid_pinpoints


def test_eval_answerer_uses_anyres_and_batches_like_single_answers(trained: dict) -> None:
    answerer = Answerer(Path(trained["model"]), torch.device("cpu"))
    images = [_random_image(90, 30, 4), _random_image(40, 40, 5), _random_image(25, 100, 6)]
    prompts = ["What colour is it?", "How many shapes?", "Is there a bar chart in the image?"]
    batched = answerer.answer(images, prompts, 4)
    assert batched == [answerer.answer([image], [prompt], 4)[0] for image, prompt in zip(images, prompts, strict=True)]


def test_hf_llava_next_export_gives_equal_logits(trained: dict, tmp_path: Path) -> None:
    from mllm.interop import ExportConfig, ExportError, export
    from mllm.interop.hf_llava_next import export_hf_llava_next

    export(ExportConfig(model=trained["model"], format="hf-llava-next", out=str(tmp_path / "hf")))
    model, tokenizer = VisionLanguageModel.from_pretrained(Path(trained["model"]))
    model.eval()
    hf_model = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf", backend="pil")
    for width, height in [(120, 35), (33, 90), (64, 64)]:
        image = _random_image(width, height, width)
        pixels, sizes, counts = model.preprocess_images([image])
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": IMAGE_TOKEN + "\nWhat is it?"}],
                                               tokenize=False, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt", add_special_tokens=False)
        ids = torch.tensor([encode_prompt(tokenizer, IMAGE_TOKEN + "\nWhat is it?", "chat", counts)])
        assert inputs["input_ids"].tolist() == ids.tolist()
        assert torch.allclose(inputs["pixel_values"][0], pixels, atol=1e-6)
        with torch.no_grad():
            ours = model(ids, torch.ones_like(ids), pixels, image_sizes=sizes).logits
            theirs = hf_model(**inputs).logits
        assert torch.allclose(ours, theirs, atol=1e-4), (width, height)
    with pytest.raises(ExportError, match="image_newline"):  # plain LLaVA has no newline nor tiles
        export(ExportConfig(model=trained["model"], format="hf-llava", out=str(tmp_path / "plain")))
    model.grid_pinpoints = None
    with pytest.raises(ExportError, match="not AnyRes"):
        export_hf_llava_next(model, tokenizer, tmp_path / "refused")
