"""`mllm eval`: answer files, resuming, results, chance levels, and errors that name the missing file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mllm.eval import runner
from mllm.eval.benchmarks import chance_level, load_rows, parse_benchmarks
from mllm.eval.metrics import BENCHMARKS
from mllm.eval.runner import EvalConfig, evaluate


@pytest.fixture(scope="module")
def model_dir(make_tiny_vlm: Callable[..., Path]) -> Path:
    return make_tiny_vlm("evalmodel", image_size=112)


def _config(model_dir: Path, world: Path, out: Path, **kw: object) -> EvalConfig:
    return EvalConfig(model=str(model_dir), data=str(world / "benchmarks"), out=str(out), batch_size=4, limit=6,
                      **kw)


def test_eval_writes_answer_files_results_and_table(model_dir: Path, tiny_world: Path, tmp_path: Path) -> None:
    results = evaluate(_config(model_dir, tiny_world, tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["benchmarks"]) == list(BENCHMARKS)
    for name, entry in saved["benchmarks"].items():
        assert entry["samples"] == 6 and entry["protocol"] == "default" and entry["model"] == str(model_dir)
        assert 0.0 <= entry["headline"] <= 100.0 and 0.0 <= entry["chance"] <= 100.0
        lines = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert len(lines) == 6 and set(lines[0]) == {"question_id", "prompt", "text", "model_id"}
    mean = sum(e["headline"] for e in saved["benchmarks"].values()) / len(BENCHMARKS)
    assert saved["mean"] == pytest.approx(mean) == results["mean"]
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n") == len(BENCHMARKS) + 3 and "| pope | f1 |" in table


def test_eval_resumes_from_the_answer_files(model_dir: Path, tiny_world: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(model_dir, tiny_world, tmp_path, benchmarks="pope,mme")
    first = evaluate(cfg)
    cache = tmp_path / "pope.jsonl"
    cache.write_text(cache.read_text() + '{"question_id": "torn')  # a crash mid-write

    def must_not_generate(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("every answer was cached; nothing should be generated")

    monkeypatch.setattr(runner.Answerer, "answer", must_not_generate)
    second = evaluate(cfg)
    assert second["benchmarks"]["pope"]["metrics"] == first["benchmarks"]["pope"]["metrics"]


def test_eval_generates_only_the_missing_answers(model_dir: Path, tiny_world: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(model_dir, tiny_world, tmp_path, benchmarks="gqa")
    evaluate(cfg)
    cache = tmp_path / "gqa.jsonl"
    cache.write_text("\n".join(cache.read_text().splitlines()[:4]) + "\n")
    asked: list[int] = []
    original = runner.Answerer.answer

    def counting(self: runner.Answerer, images: list, prompts: list[str], max_new: int) -> list[str]:
        asked.append(len(prompts))
        return original(self, images, prompts, max_new)

    monkeypatch.setattr(runner.Answerer, "answer", counting)
    evaluate(cfg)
    assert sum(asked) == 2 and len(cache.read_text().splitlines()) == 6


def test_missing_benchmark_file_is_named(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"benchmark 'pope' not found: expected .*pope\.parquet"):
        evaluate(EvalConfig(model=str(model_dir), data=str(tmp_path), out=str(tmp_path / "o"), benchmarks="pope"))


def test_unreadable_benchmark_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "pope.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=f"cannot read table {tmp_path / 'pope.parquet'}"):
        load_rows(tmp_path, "pope")


def test_unknown_benchmark_and_protocol_are_refused() -> None:
    with pytest.raises(ValueError, match="mmbench"):
        parse_benchmarks("pope,mmbench")
    with pytest.raises(ValueError, match="protocol"):
        evaluate(EvalConfig(protocol="vibes"))
    assert parse_benchmarks("all") == list(BENCHMARKS)


def test_world_benchmarks_load_with_their_columns(tiny_world: Path) -> None:
    rows = load_rows(tiny_world / "benchmarks", "textvqa")
    assert len(rows) == 24 and len(rows[0]["answers"]) == 10 and rows[0]["image"]["bytes"]


def test_chance_level_of_yes_no_benchmarks() -> None:
    pope = [{"question_id": str(i), "question": "q", "answer": a, "category": "random"}
            for i, a in enumerate(["yes", "no"] * 20)]
    # Always "yes": precision 0.5, recall 1, F1 = 2*0.5/(1.5) = 66.7, better than random guessing (about 50).
    assert chance_level("pope", pope) == pytest.approx(200 / 3, abs=1e-6)
    mme = [{"question_id": f"img{i // 2}", "question": "q", "answer": a, "category": "existence"}
           for i, a in enumerate(["Yes", "No"] * 50)]
    # A constant answer gets acc 50, acc+ 0 (25 of 100); random guessing expects acc 50, acc+ 25 (37.5).
    assert 32.0 < chance_level("mme", mme) < 43.0


def test_chance_level_of_open_answers_is_the_best_constant_answer() -> None:
    docs = [{"question": "q", "answer": a} for a in ["red", "red", "red", "blue"]]
    assert chance_level("gqa", docs) == pytest.approx(75.0)
    seed = [{"question": "q", "answer": "B", "data_type": "image", **{f"choice_{c}": c for c in "abcd"}}] * 4
    assert chance_level("seed", seed) == pytest.approx(100.0)
