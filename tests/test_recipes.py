"""The three shipped recipes, read from their real YAML files, run end to end on the synthetic world at tiny
sizes: each stage trains what it says and nothing else, hands its model to the next, and the result answers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mllm.cli import _to_dataclass, build_parser
from mllm.eval.runner import EvalConfig, evaluate
from mllm.train_stages.stages import TrainConfig
from mllm.train_stages.vlm_trainer import train
from mllm.vlm import CONFIG_FILE, VisionLanguageModel

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"llava15": ["align", "instruct"], "open_llava_next": ["align", "instruct"],
           "openvision_smollm": ["align", "knowledge", "instruct"]}


def load_recipe(name: str, *overrides: str) -> TrainConfig:
    """The recipe as `mllm train --config configs/NAME.yaml OVERRIDES` would resolve it."""
    parser, loaded = build_parser("train")
    parsed = parser.parse_args(["train", "--config", str(REPO / "configs" / f"{name}.yaml"), *overrides])
    raw = parsed["train"]
    raw.pop("config", None)
    return _to_dataclass(TrainConfig, loaded["train"][2].instantiate(raw))


def tiny(recipe: TrainConfig, world: Path, encoder_dir: Path, out: Path) -> TrainConfig:
    """The recipe's stages (what trains, formats, image handling, LR ratios) at toy scale on the world."""
    recipe = copy.deepcopy(recipe)
    recipe.out, recipe.data_root, recipe.encoder.path = str(out), str(world), str(encoder_dir)
    recipe.llm.tokenizer = str(world / "tokenizer")
    recipe.llm.hidden_size, recipe.llm.num_layers, recipe.llm.intermediate_size = 64, 1, 128
    recipe.llm.num_heads = recipe.llm.num_kv_heads = 2
    recipe.bf16, recipe.deepspeed, recipe.report_to, recipe.progress = False, None, [], False
    for stage in recipe.stages:
        stage.data = "stage_data/instruct.json" if stage.name == "instruct" else "stage_data/align.json"
        stage.image_folder = "images"
        stage.batch_size, stage.max_steps, stage.lr = 4, 3, 1e-3 * stage.lr / recipe.stages[-1].lr
        stage.lr_overrides = {k: 1e-3 * v / recipe.stages[-1].lr for k, v in stage.lr_overrides.items()}
    return recipe



def _weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    parts = {"tower": load_file(str(folder / "vision.safetensors")),
             "connector": load_file(str(folder / "connector.safetensors"))}
    parts["llm"] = load_file(str(folder / "llm" / "model.safetensors"))
    return parts


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_runs_end_to_end_on_the_world(name: str, tiny_world: Path, encoder_dir: Path, tmp_path: Path) -> None:
    recipe = tiny(load_recipe(name), tiny_world, encoder_dir, tmp_path / "run")
    if name == "openvision_smollm":
        recipe.encoder.image_size = 64  # the recipe's resolution parameter, away from the encoder's own 32
    summary = train(recipe)
    assert [s["stage"] for s in summary["stages"]] == RECIPES[name]
    previous = None
    for stage, result in zip(recipe.stages, summary["stages"], strict=True):
        assert result["trained"] == stage.train and result["steps"] == 3 and result["skipped"] == 0
        weights = _weights(Path(result["model"]))
        if previous is not None:
            for module in ("tower", "connector", "llm"):
                assert _changed(previous[module], weights[module]) == (module in stage.train), (stage.name, module)
        previous = weights
    model, _ = VisionLanguageModel.from_pretrained(Path(summary["model"]))
    config = json.loads((Path(summary["model"]) / CONFIG_FILE).read_text())
    if name == "openvision_smollm":
        assert model.tower.image.size == 64 and model.num_image_tokens == 16
    if name == "open_llava_next":
        assert "anyres" in json.dumps(config)
    results = evaluate(EvalConfig(model=summary["model"], data=str(tiny_world / "benchmarks"), benchmarks="pope,gqa",
                                  out=str(tmp_path / "eval"), limit=2, batch_size=2, device="cpu"))
    assert set(results["benchmarks"]) == {"pope", "gqa"}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipes_state_the_papers_settings(name: str) -> None:
    recipe = load_recipe(name, "--encoder.path", "x", "--llm.path", "y")
    first, last = recipe.stages[0], recipe.stages[-1]
    assert (first.name, first.train, first.format, first.lr) == ("align", ["connector"], "plain", 1e-3)
    assert last.name == "instruct" and last.format == "chat" and last.group_by_modality
    assert recipe.connector == "mlp2x_gelu" and recipe.encoder.feature_layer == -2
    if recipe.deepspeed:
        assert (REPO / recipe.deepspeed).is_file()
    if name == "llava15":
        assert (last.train, last.lr, last.image_aspect) == (["connector", "llm"], 2e-5, "pad")
    if name == "open_llava_next":
        assert {s.image_aspect for s in recipe.stages} == {"anyres"}
        assert (last.train, last.lr, last.lr_overrides) == (["tower", "connector", "llm"], 2e-5, {"tower": 2e-6})
    if name == "openvision_smollm":
        assert recipe.stages[1].train == ["tower", "connector", "llm"] and recipe.encoder.image_size == 384
        assert load_recipe(name, "--encoder.image_size", "768").encoder.image_size == 768


def test_modality_grouped_stage_trains_on_mixed_image_and_text_only_data(tiny_world: Path, encoder_dir: Path,
                                                                         tmp_path: Path) -> None:
    records = json.loads((tiny_world / "stage_data" / "instruct.json").read_text())[:16]
    text_only = [{"id": f"text-{r['id']}", "conversations": [
        {**turn, "value": turn["value"].replace("<image>\n", "")} for turn in r["conversations"]]} for r in records[:8]]
    (tmp_path / "mixed.json").write_text(json.dumps(records[8:] + text_only))
    recipe = tiny(load_recipe("llava15"), tiny_world, encoder_dir, tmp_path / "run")
    recipe.stages[1].data = str(tmp_path / "mixed.json")  # absolute: data_root does not apply
    summary = train(recipe)
    assert summary["stages"][1]["samples"] == 16 and summary["stages"][1]["skipped"] == 0


def test_a_text_only_batch_still_reaches_the_trained_image_side(tiny_world: Path, encoder_dir: Path,
                                                                tmp_path: Path) -> None:
    from mllm.train_stages.vlm_trainer import assemble, set_trainable

    model, tokenizer = assemble(tiny(load_recipe("llava15"), tiny_world, encoder_dir, tmp_path))
    set_trainable(model, ["tower", "connector"])
    ids = torch.tensor([tokenizer("a red circle", add_special_tokens=False)["input_ids"]])
    model.llm.requires_grad_(True)
    model(ids, torch.ones_like(ids), None, ids.clone()).loss.backward()
    image_side = [p for m in (model.tower, model.connector) for p in m.parameters()]
    assert all(p.grad is not None and not p.grad.any() for p in image_side)
