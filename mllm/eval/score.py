"""`mllm eval score`: score an existing answer file against a local copy of a benchmark.

The annotations are a parquet file, an arrow file, or a `datasets.save_to_disk` folder (a Dataset, or a
DatasetDict of one split) in the lmms-eval column layout; images are not read. The predictions are an
answer file (`mllm.eval.answer_files`): ours, LLaVA's, or anyone's with `question_id` and `text`. Nothing is
downloaded. The metrics go to stdout as one JSON object and, with `--out`, into `results.json` there (merged
with the other benchmarks already in it), in the layout `mllm eval run` writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mllm.eval.answer_files import align_answers, question_ids, read_answer_file
from mllm.eval.metrics import check_benchmark, check_protocol
from mllm.eval.prompts import build_prompt
from mllm.eval.runner import benchmark_result

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "images")


@dataclass
class ScoreConfig:
    """Options of `mllm eval score`."""

    benchmark: str = "pope"
    annotations: str = ""  # parquet / arrow file or save_to_disk folder in the lmms-eval layout
    predictions: str = ""  # answer-file JSONL with question_id and text
    protocol: str = "default"
    out: str = ""  # a folder for results.json ("": print the metrics only)
    model: str = ""  # the model named in results.json ("": the answer file's model_id, else its path)


def _arrow_file(path: Path) -> pa.Table:
    """An arrow file in either IPC flavour: the stream `save_to_disk` writes, or the random-access file."""
    try:
        return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _dataset_folder(path: Path) -> pa.Table:
    shards = sorted(path.glob("*.arrow"))
    if not shards and (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if len(splits) != 1:
            raise ValueError(f"{path} is a DatasetDict with splits {splits}; pass the folder of one split, "
                             f"e.g. {path / splits[0]}" if splits else f"{path} is a DatasetDict without splits")
        return _dataset_folder(path / splits[0])
    if not shards:
        raise ValueError(f"{path} is a folder without .arrow shards (not a save_to_disk dataset)")
    return pa.concat_tables(_arrow_file(shard) for shard in shards)


def read_annotations(path: Path) -> list[dict[str, Any]]:
    """The rows of a local benchmark copy, without their image columns."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"annotations not found: {path}")
    try:
        if path.is_dir():
            table = _dataset_folder(path)
        elif path.suffix == ".arrow":
            table = _arrow_file(path)
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"cannot read annotations {path}: {err}") from err
    rows = table.drop_columns([c for c in IMAGE_COLUMNS if c in table.column_names]).to_pylist()
    if not rows:
        raise ValueError(f"annotations {path} have no rows")
    return rows


def _prompt_or_none(benchmark: str, doc: dict[str, Any], protocol: str) -> str | None:
    """The row's prompt, used only to tell apart rows sharing a question id; None where the row lacks a
    prompt column (scoring needs only the answer columns)."""
    try:
        return build_prompt(benchmark, doc, protocol)
    except ValueError:
        return None


def score_files(cfg: ScoreConfig) -> dict[str, Any]:
    """Score `cfg.predictions` against `cfg.annotations`; returns the benchmark's `results.json` entry and
    writes it into `cfg.out/results.json` when `cfg.out` is set."""
    check_benchmark(cfg.benchmark)
    check_protocol(cfg.protocol)
    if not cfg.annotations or not cfg.predictions:
        raise ValueError("mllm eval score needs --annotations FILE and --predictions FILE")
    docs = read_annotations(Path(cfg.annotations))
    records = read_answer_file(Path(cfg.predictions))
    if not records:
        raise ValueError(f"predictions file {cfg.predictions} has no answers")
    prompts = [_prompt_or_none(cfg.benchmark, doc, cfg.protocol) for doc in docs]
    predictions = align_answers(question_ids(docs), prompts, records)
    model = cfg.model or str(records[0].get("model_id") or cfg.predictions)
    result = benchmark_result(cfg.benchmark, docs, predictions, cfg.protocol, model)
    result.update(annotations=cfg.annotations, predictions=cfg.predictions)
    if cfg.out:
        write_results(Path(cfg.out), cfg.benchmark, result)
    return result


def write_results(out: Path, benchmark: str, result: dict[str, Any]) -> Path:
    """Add (or replace) one benchmark's entry in `out/results.json`, keeping the others and their mean."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    summary = json.loads(path.read_text()) if path.is_file() else {"benchmarks": {}}
    summary["benchmarks"][benchmark] = result
    entries = summary["benchmarks"].values()
    summary["mean"] = sum(entry["headline"] for entry in entries) / len(entries)
    path.write_text(json.dumps(summary, indent=1))
    log.info("%s: %s %.2f -> %s", benchmark, result["headline_metric"], result["headline"], path)
    return path
