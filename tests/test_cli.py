"""The `mllm` console script: resolved configs, overrides, and bad input named in one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mllm.cli import COMMANDS, main


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name, (_, job) in COMMANDS.items():
        for words in [[name, action] for action in job] if isinstance(job, dict) else [[name]]:
            with pytest.raises(SystemExit) as done:
                main([*words, "--help"])
            assert done.value.code == 0
            assert "--config" in capsys.readouterr().out


def test_world_writes_its_resolved_config_with_overrides(tmp_path: Path) -> None:
    main(["world", "--out", str(tmp_path), "--scale", "tiny", "--seed", "3", "--shard_size", "120"])
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved == {"out": str(tmp_path), "seed": 3, "scale": "tiny", "image_size": 96, "shard_size": 120,
                     "jpeg_quality": 95, "describe_prob": 0.5, "variation": 0.0}
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 2
    assert json.loads((tmp_path / "world.json").read_text())["config"]["seed"] == 3


def test_config_file_and_dotted_overrides_combine(tmp_path: Path, tiny_world: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("stages:\n  - name: only\n    train: [connector]\n    lr: 0.5\n")
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="encoder.path must name an exported encoder folder"):
        main(["train", "--config", str(recipe), "--out", str(out), "--llm.tokenizer", str(tiny_world / "tokenizer"),
              "--llm.hidden_size", "32"])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["stages"][0]["lr"] == 0.5 and saved["stages"][0]["name"] == "only"
    assert saved["llm"]["hidden_size"] == 32


def test_unknown_option_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["world", "--out", str(tmp_path), "--colour_count", "9"])
    assert "colour_count" in capsys.readouterr().err


def test_stage_with_unknown_module_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("stages:\n  - name: s\n    train: [projector]\n")
    with pytest.raises(SystemExit, match="unknown module"):
        main(["train", "--config", str(recipe), "--out", str(tmp_path / "o")])


def test_pretrain_names_missing_shards(tmp_path: Path, tiny_world: Path) -> None:
    missing = tmp_path / "no_shards"
    with pytest.raises(SystemExit, match=f"shard not found: {missing}"):
        main(["pretrain", "--out", str(tmp_path / "o"), "--tokenizer", str(tiny_world / "tokenizer"),
              "--data.shards", str(missing)])


def test_pretrain_names_missing_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="tokenizer folder not found: .*nowhere"):
        main(["pretrain", "--out", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "nowhere")])


def test_train_names_malformed_stage_data(tmp_path: Path, tiny_world: Path) -> None:
    from mllm.data.images import ImageConfig
    from mllm.encoders.tower import save_encoder
    from mllm.encoders.vit import VisionTransformer, ViTConfig

    save_encoder(VisionTransformer(ViTConfig("Pico", 16, 32)), ImageConfig(size=32), tmp_path / "enc")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "a", "conversations": [}')
    args = ["train", "--out", str(tmp_path / "o"), "--encoder.path", str(tmp_path / "enc"),
            "--llm.tokenizer", str(tiny_world / "tokenizer"), "--llm.hidden_size", "32", "--llm.num_layers", "1",
            "--llm.num_heads", "2", "--llm.num_kv_heads", "2"]
    with pytest.raises(SystemExit, match=f"malformed JSON in {broken}"):
        main([*args, "--stages", json.dumps([{"name": "s", "data": str(broken),
                                               "image_folder": str(tiny_world / "images")}])])
    with pytest.raises(SystemExit, match="stage data not found: .*absent.json"):
        main([*args, "--stages", json.dumps([{"name": "s", "data": str(tmp_path / "absent.json"),
                                               "image_folder": str(tiny_world / "images")}])])


def test_eval_names_missing_model(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not an mllm model folder"):
        main(["eval", "run", "--model", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
