"""Evaluation during training: every N optimizer steps, the live model answers a few rows of each benchmark.

A stage with `eval_every: N` gets an `EvalDuringTraining` callback. It loads the first `eval_limit` rows of
each chosen benchmark once (images decoded), and every N steps answers them with the in-memory model through
the runner's `Answerer` (no save, no reload; eval() for the answers, then back to train()), scores them as
`mllm eval run` does, and writes each headline as `eval_<benchmark>` (plus `eval_mean`) into the log entry of
that step, before the reporters read it: TensorBoard shows them as `eval/<benchmark>`. Every process answers
the same rows (nothing is sharded: the subset is small), so all take part in each forward pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mllm.eval.benchmarks import first_rows, load_rows, parse_benchmarks, row_image
from mllm.eval.metrics import headline, score_benchmark
from mllm.eval.prompts import MAX_NEW_TOKENS, build_prompt
from mllm.eval.runner import Answerer

log = logging.getLogger(__name__)


@dataclass
class Subset:
    """The rows of one benchmark that are answered at each evaluation."""

    docs: list[dict[str, Any]]
    prompts: list[str]
    images: list[Any]


def load_subset(data_dir: Path, name: str, limit: int, protocol: str) -> Subset:
    rows = first_rows(name, load_rows(data_dir, name), limit)
    if not rows:
        raise ValueError(f"eval during training: no whole {name} rows among the first {limit}; raise eval_limit")
    docs = [{k: v for k, v in row.items() if k != "image"} for row in rows]
    return Subset(docs, [build_prompt(name, doc, protocol) for doc in docs], [row_image(row) for row in rows])


class EvalDuringTraining(TrainerCallback):
    """Scores benchmark subsets with the live model every `every` steps, into the Trainer's log history."""

    def __init__(self, every: int, data_dir: Path, benchmarks: str, limit: int, tokenizer: Any,
                 batch_size: int = 8, protocol: str = "default") -> None:
        if every < 1 or limit < 1 or batch_size < 1:
            raise ValueError(f"eval during training needs every, limit and batch_size >= 1, got {every}, {limit}, "
                             f"{batch_size}")
        self.every, self.tokenizer, self.batch_size, self.protocol = every, tokenizer, batch_size, protocol
        self.subsets = {name: load_subset(Path(data_dir), name, limit, protocol)
                        for name in parse_benchmarks(benchmarks)}
        self.pending: dict[str, float] = {}

    def evaluate(self, model: Any) -> dict[str, float]:
        """`eval_<benchmark>` headlines and their `eval_mean` for the model as it is now."""
        answerer = Answerer.in_memory(model, self.tokenizer, next(model.parameters()).device)
        was_training = model.training
        model.eval()
        try:
            scores = {}
            for name, subset in self.subsets.items():
                answers: list[str] = []
                for start in range(0, len(subset.docs), self.batch_size):
                    end = start + self.batch_size
                    answers += answerer.answer(subset.images[start:end], subset.prompts[start:end],
                                               MAX_NEW_TOKENS[name])
                metrics = score_benchmark(name, subset.docs, answers, self.protocol)
                scores[f"eval_{name}"] = round(headline(name, metrics), 2)
        finally:
            model.train(was_training)
        scores["eval_mean"] = round(sum(scores.values()) / len(scores), 2)
        return scores

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Any = None, **kwargs: Any) -> None:
        if model is None or state.global_step % self.every:
            return
        self.pending = self.evaluate(model)
        log.info("step %d: %s", state.global_step, ", ".join(f"{k} {v:.1f}" for k, v in self.pending.items()))
        control.should_log = True  # the scores ride on this step's log entry

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not self.pending or logs is None:
            return
        logs.update(self.pending)
        # The Trainer appended its copy of `logs` just before calling the callbacks.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self.pending)
        self.pending = {}
