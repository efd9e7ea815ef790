"""`mllm eval score` and `mllm eval run`: answer files (ours and LLaVA's) scored against local benchmark copies in
parquet, arrow and save_to_disk layouts, errors that name the problem, and evaluation during training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch

from mllm.cli import main
from mllm.data.images import ImageConfig
from mllm.encoders.tower import EncoderConfig, save_encoder
from mllm.encoders.vit import VisionTransformer, ViTConfig
from mllm.eval import runner
from mllm.eval.answer_files import align_answers, question_ids
from mllm.eval.benchmarks import first_rows, load_rows
from mllm.eval.metrics import BENCHMARKS
from mllm.eval.prompts import build_prompt
from mllm.eval.runner import EvalConfig, evaluate
from mllm.eval.score import ScoreConfig, read_annotations, score_files
from mllm.llm import LLMConfig
from mllm.train_stages.stages import StageConfig, TrainConfig
from mllm.train_stages.vlm_trainer import train


def gold(name: str, row: dict[str, Any]) -> str:
    """The answer a perfect model gives, in the form each scorer accepts."""
    if name == "textvqa":
        return row["answers"][0]
    if name == "ocrbench":
        return row["answer"][0] if isinstance(row["answer"], list) else row["answer"]
    if name == "sqa_img":
        return "ABCDEFGH"[row["answer"]]
    return str(row["answer"])


def write_answers(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def gold_answers(world: Path, name: str, path: Path) -> Path:
    rows = load_rows(world / "benchmarks", name)
    return write_answers(path, [{"question_id": q, "prompt": build_prompt(name, r), "text": gold(name, r),
                                 "model_id": "oracle"} for q, r in zip(question_ids(rows), rows, strict=True)])


def test_score_prints_one_json_object_and_merges_results(tiny_world: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    for name in BENCHMARKS:
        predictions = gold_answers(tiny_world, name, tmp_path / f"{name}.jsonl")
        main(["eval", "score", "--benchmark", name, "--annotations", str(tiny_world / "benchmarks" / f"{name}.parquet"),
              "--predictions", str(predictions), "--out", str(tmp_path / "res")])
        metrics = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON object
        assert isinstance(metrics, dict)
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert list(saved["benchmarks"]) == list(BENCHMARKS)
    for entry in saved["benchmarks"].values():
        assert entry["headline"] == pytest.approx(100.0)
        assert entry["protocol"] == "default" and entry["samples"] == 24 and entry["model"] == "oracle"
        assert len(entry["date"]) == 10
    assert saved["mean"] == pytest.approx(100.0)


def test_mme_rows_sharing_an_image_id_are_told_apart_by_prompt(tiny_world: Path, tmp_path: Path) -> None:
    rows = load_rows(tiny_world / "benchmarks", "mme")
    assert len(set(question_ids(rows))) == len(rows) // 2  # two questions per image id
    records = [{"question_id": q, "prompt": build_prompt("mme", r), "text": gold("mme", r)}
               for q, r in zip(question_ids(rows), rows, strict=True)]
    # Reversed file order: only the prompts can pair answers with rows.
    result = score_files(ScoreConfig(benchmark="mme", annotations=str(tiny_world / "benchmarks" / "mme.parquet"),
                                     predictions=str(write_answers(tmp_path / "a.jsonl", records[::-1]))))
    assert result["headline"] == pytest.approx(100.0)
    # Without prompts (a bare LLaVA file) rows sharing an id pair up in file order: swapping within each
    # pair makes every answer wrong (each image has a Yes and a No question).
    bare = [{"question_id": r["question_id"], "text": r["text"]} for r in records]
    swapped = [bare[i + 1 - 2 * (i % 2)] for i in range(len(bare))]
    assert [r["answer"] for r in rows[0:2]] in (["Yes", "No"], ["No", "Yes"])
    result = score_files(ScoreConfig(benchmark="mme", annotations=str(tiny_world / "benchmarks" / "mme.parquet"),
                                     predictions=str(write_answers(tmp_path / "b.jsonl", swapped))))
    assert result["metrics"]["total"] == 0.0


def test_llava_answer_file_on_a_locally_written_textvqa(tmp_path: Path) -> None:
    # TextVQA layout with integer question ids; LLaVA writes ids as ints and no model_id is required.
    answers = ["nokia", "nokia"] + ["phone"] * 8
    table = pa.table({"question_id": [7, 8], "question": ["what brand is this?", "what is it?"],
                      "answers": [answers, ["phone"] * 10], "ocr_tokens": [["NOKIA"], []]})
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "textvqa.parquet")
    predictions = write_answers(tmp_path / "answers.jsonl", [{"question_id": 8, "text": "Phone."},
                                                             {"question_id": 7, "text": "Nokia"}])
    result = score_files(ScoreConfig(benchmark="textvqa", annotations=str(tmp_path / "textvqa.parquet"),
                                     predictions=str(predictions), out=str(tmp_path / "out")))
    # "Nokia" matches 2 of 10 answers: leave-one-out mean of min(1, m/3) = (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    assert result["metrics"]["accuracy"] == pytest.approx((60.0 + 100.0) / 2)
    assert result["model"] == str(predictions)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["benchmarks"]["textvqa"]["samples"] == 2


def _pope_table() -> pa.Table:
    return pa.table({"question_id": ["a", "b", "c", "d"], "question": ["Is there a cat?"] * 4,
                     "answer": ["yes", "no", "yes", "no"], "category": ["random"] * 4,
                     "image": [{"bytes": b"x", "path": None}] * 4})


def _write_stream(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


@pytest.mark.parametrize("layout", ["arrow_stream", "arrow_file", "dataset_folder", "dataset_dict"])
def test_annotations_in_arrow_and_save_to_disk_layouts(layout: str, tmp_path: Path) -> None:
    table = _pope_table()
    if layout == "arrow_stream":
        path = tmp_path / "pope.arrow"
        _write_stream(table, path)
    elif layout == "arrow_file":
        path = tmp_path / "pope.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    elif layout == "dataset_folder":
        path = tmp_path / "pope"
        _write_stream(table.slice(0, 2), path / "data-00000-of-00002.arrow")
        _write_stream(table.slice(2), path / "data-00001-of-00002.arrow")
    else:
        path = tmp_path / "pope"
        _write_stream(table, path / "test" / "data-00000-of-00001.arrow")
        (path / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    rows = read_annotations(path)
    assert [r["question_id"] for r in rows] == ["a", "b", "c", "d"] and "image" not in rows[0]
    predictions = write_answers(tmp_path / "p.jsonl", [{"question_id": q, "text": "yes"} for q in "abcd"])
    result = score_files(ScoreConfig(benchmark="pope", annotations=str(path), predictions=str(predictions)))
    # Always "yes" on a balanced split: accuracy 50, precision 0.5, recall 1, F1 2/3.
    assert result["metrics"]["accuracy"] == pytest.approx(50.0)
    assert result["metrics"]["f1"] == pytest.approx(200 / 3)


def test_dataset_dict_with_several_splits_asks_for_one(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "dataset_dict.json").write_text(json.dumps({"splits": ["adversarial", "random"]}))
    with pytest.raises(ValueError, match=r"splits \['adversarial', 'random'\]; pass the folder of one split"):
        read_annotations(tmp_path / "d")


def test_score_errors_name_the_problem(tiny_world: Path, tmp_path: Path) -> None:
    annotations = tiny_world / "benchmarks" / "pope.parquet"
    good = gold_answers(tiny_world, "pope", tmp_path / "good.jsonl")
    with pytest.raises(SystemExit, match=f"predictions file not found: {tmp_path / 'absent.jsonl'}"):
        main(["eval", "score", "--benchmark", "pope", "--annotations", str(annotations),
              "--predictions", str(tmp_path / "absent.jsonl")])
    with pytest.raises(SystemExit, match=f"annotations not found: {tmp_path / 'absent.parquet'}"):
        main(["eval", "score", "--benchmark", "pope", "--annotations", str(tmp_path / "absent.parquet"),
              "--predictions", str(good)])
    lines = good.read_text().splitlines()
    mismatched = tmp_path / "mismatched.jsonl"
    mismatched.write_text("\n".join(lines[1:] + ['{"question_id": "stray", "text": "yes"}']) + "\n")
    first_id = json.loads(lines[0])["question_id"]
    with pytest.raises(SystemExit, match=rf"1 question id\(s\) of the annotations have no prediction: '{first_id}'; "
                                         r"1 question id\(s\) of the predictions are not in the annotations: 'stray'"):
        main(["eval", "score", "--benchmark", "pope", "--annotations", str(annotations),
              "--predictions", str(mismatched)])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(lines[0] + '\n{"question_id": "x"}\n')
    with pytest.raises(SystemExit, match=f"{broken}:2: not an answer record"):
        main(["eval", "score", "--benchmark", "pope", "--annotations", str(annotations), "--predictions", str(broken)])


def test_rows_sharing_an_id_need_prompts_or_equal_counts() -> None:
    records = [{"question_id": "img", "prompt": "other", "text": "Yes"}]
    with pytest.raises(ValueError, match="question id 'img': 2 annotation row"):
        align_answers(["img", "img"], ["q1", "q2"], records)
    # A rerun appended a newer answer to the same prompt: the later one counts.
    newer = [{"question_id": "1", "prompt": "<image>\nq", "text": "old"}, {"question_id": "1", "prompt": "q",
                                                                           "text": "new"}]
    assert align_answers(["1"], ["q"], newer) == ["new"]


class OracleAnswerer:
    """Stands in for a model: answers each prompt with its gold answer (set per test), counting calls."""

    gold_by_prompt: dict[str, str] = {}

    def __init__(self, folder: Path, device: torch.device) -> None:
        pass

    def answer(self, images: list[Any], prompts: list[str], max_new_tokens: int) -> list[str]:
        return [self.gold_by_prompt[p] for p in prompts]


def test_run_keeps_mme_pairs_apart_and_its_files_score_the_same(tiny_world: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {n: load_rows(tiny_world / "benchmarks", n) for n in ("mme", "pope")}
    OracleAnswerer.gold_by_prompt = {build_prompt(n, r): gold(n, r) for n, rs in rows.items() for r in rs}
    monkeypatch.setattr(runner, "Answerer", OracleAnswerer)
    out = tmp_path / "run"
    results = evaluate(EvalConfig(model="oracle", data=str(tiny_world / "benchmarks"), out=str(out),
                                  benchmarks="mme,pope", batch_size=5))
    # An answer cache keyed by image id alone gave both questions of an image the second answer.
    assert results["benchmarks"]["mme"]["metrics"]["total"] == results["benchmarks"]["mme"]["metrics"]["max_total"]
    for name in ("mme", "pope"):
        annotations = str(tiny_world / "benchmarks" / f"{name}.parquet")
        rescored = score_files(ScoreConfig(benchmark=name, annotations=annotations,
                                           predictions=str(out / f"{name}.jsonl")))
        assert rescored["metrics"] == results["benchmarks"][name]["metrics"]
        assert rescored["model"] == "oracle"


def test_first_rows_keeps_whole_mme_pairs(tiny_world: Path) -> None:
    rows = load_rows(tiny_world / "benchmarks", "mme")
    kept = first_rows("mme", rows, 5)
    assert len(kept) == 4 and len(set(question_ids(kept))) == 2
    assert len(first_rows("pope", rows, 5)) == 5 and first_rows("mme", rows, 0) == rows


def test_stage_evaluates_during_training_into_the_log_history(tiny_world: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    save_encoder(VisionTransformer(ViTConfig("Pico", patch_size=16, image_size=32)), ImageConfig(size=32),
                 tmp_path / "encoder")
    stage = StageConfig(name="s", data="stage_data/align.json", image_folder="images", batch_size=4, max_steps=2,
                        eval_every=1, eval_benchmarks="pope,mme", eval_data="benchmarks", eval_limit=4)
    cfg = TrainConfig(out=str(tmp_path / "run"), encoder=EncoderConfig(path=str(tmp_path / "encoder")),
                      llm=LLMConfig(tokenizer=str(tiny_world / "tokenizer"), hidden_size=64, num_layers=1,
                                    num_heads=2, num_kv_heads=2, intermediate_size=128),
                      stages=[stage], data_root=str(tiny_world), logging_steps=100, progress=False)
    summary = train(cfg)
    events = EventAccumulator(str(next((tmp_path / "run" / "s" / "checkpoints" / "runs").iterdir())))
    events.Reload()
    logged = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in ("eval/pope", "eval/mme", "eval/mean")}
    assert [step for step, _ in logged["eval/pope"]] == [1, 2]
    # The step-2 scores are those of the saved model on the same rows: the live model, no copy.
    final = evaluate(EvalConfig(model=summary["model"], data=str(tiny_world / "benchmarks"), out=str(tmp_path / "e"),
                                benchmarks="pope,mme", limit=4, device="cpu"))
    for name in ("pope", "mme"):
        assert logged[f"eval/{name}"][-1][1] == pytest.approx(final["benchmarks"][name]["headline"], abs=0.01)


def test_stage_refuses_bad_eval_settings() -> None:
    with pytest.raises(ValueError, match="mmbench"):
        StageConfig(eval_every=5, eval_benchmarks="pope,mmbench")
    with pytest.raises(ValueError, match="eval_every must be >= 0"):
        StageConfig(eval_every=-1)
