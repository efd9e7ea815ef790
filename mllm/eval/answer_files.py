"""LLaVA answer files and matching their answers to benchmark rows.

An answer file is JSONL, one answer a line: `question_id`, `text` (the raw model output), and optionally
`prompt` and `model_id`, as LLaVA's `model_vqa*.py` scripts and `mllm eval run` write them. Rows match by
`question_id` (the row index where a dataset has none). Some datasets give several rows one id: MME's two
questions about one image share the image name. Those rows match by prompt when the answers carry the
prompts the rows ask, else pairwise in file order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

IMAGE_PREFIX = "<image>\n"
_SHOWN_IDS = 5  # how many offending ids an error message lists


def question_ids(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each row's answer-file key: its `question_id` as a string, or its index where it has none."""
    return [str(row["question_id"]) if row.get("question_id") is not None else str(i) for i, row in enumerate(rows)]


def _prompt_of(record: Mapping[str, Any]) -> str | None:
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        return None
    return prompt.removeprefix(IMAGE_PREFIX)


def read_answer_file(path: Path, skip_torn: bool = False) -> list[dict[str, Any]]:
    """The records of an answer file in file order, `question_id` made a string.

    With `skip_torn`, unparsable lines are skipped (a crash mid-write leaves a torn last line, which a resumed
    run answers again); otherwise a bad line is a ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["question_id"] = str(record["question_id"])
            if not isinstance(record["text"], str):
                raise TypeError("text is not a string")
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            if skip_torn:
                continue
            raise ValueError(f"{path}:{number}: not an answer record with question_id and text ({err})") from err
        records.append(record)
    return records


def _examples(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


def align_answers(ids: Sequence[str], prompts: Sequence[str | None],
                  records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The answer text for each row (`ids[i]`, asking `prompts[i]`, None where unknown) from answer-file `records`.

    Raises ValueError when an id of the rows has no answer, an answer's id is not among the rows, or rows
    sharing an id cannot be told apart (neither their prompts nor their counts match).
    """
    rows_by_id: dict[str, list[int]] = {}
    for index, qid in enumerate(ids):
        rows_by_id.setdefault(qid, []).append(index)
    records_by_id: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        records_by_id.setdefault(str(record["question_id"]), []).append(record)
    missing = [qid for qid in rows_by_id if qid not in records_by_id]
    unknown = [qid for qid in records_by_id if qid not in rows_by_id]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"{len(missing)} question id(s) of the annotations have no prediction: "
                            f"{_examples(missing)}")
        if unknown:
            problems.append(f"{len(unknown)} question id(s) of the predictions are not in the annotations: "
                            f"{_examples(unknown)}")
        raise ValueError("predictions and annotations do not match; " + "; ".join(problems))
    answers: list[str] = [""] * len(ids)
    for qid, rows in rows_by_id.items():
        group = records_by_id[qid]
        # A later record with the same prompt wins: a rerun appends its newer answer.
        by_prompt = {_prompt_of(record): record["text"] for record in group if _prompt_of(record) is not None}
        if all(prompts[row] is not None and prompts[row] in by_prompt for row in rows):
            for row in rows:
                answers[row] = by_prompt[prompts[row]]
        elif len(group) == len(rows):
            for row, record in zip(rows, group, strict=True):
                answers[row] = record["text"]
        else:
            raise ValueError(f"question id {qid!r}: {len(rows)} annotation row(s) but {len(group)} prediction(s), "
                             "and their prompts do not tell them apart")
    return answers
