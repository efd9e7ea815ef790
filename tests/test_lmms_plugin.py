"""The lmms-eval plugin: chat requests turned into our prompts and answers (tested with stand-in requests, no
lmms-eval needed), the entry point as declared, and, where lmms-eval is installed, a real offline run on
local-data tasks whose prompts and metrics agree with ours."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from mllm.eval import lmms_plugin
from mllm.eval.benchmarks import load_rows, row_image
from mllm.eval.lmms_plugin import ChatAnswering, cut_at_stops, read_request
from mllm.eval.metrics import score_benchmark
from mllm.eval.prompts import build_prompt
from mllm.eval.runner import Answerer

REPO = Path(__file__).resolve().parents[1]
LMMS_EVAL_MISSING = ("lmms-eval is not installed here (it needs torchvision, kept out of the default install); "
                     "install it in a separate env: pip install --no-deps lmms-eval==0.7.3 plus its core imports")


@dataclass
class FakeInstance:
    """What the plugin reads of lmms-eval's Instance."""

    args: tuple[Any, ...]


class RecordingAnswerer:
    """Answers "<prompt> | <image width>" and records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int, dict[str, Any]]] = []

    def answer(self, images: list[Any], prompts: list[str], max_new_tokens: int, **options: Any) -> list[str]:
        self.calls.append((prompts, max_new_tokens, options))
        return [f"{p} | {image.width}\n\nrambling" for p, image in zip(prompts, images, strict=True)]


def _messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """lmms-eval's default chat messages: the visuals, then the question text."""
    return [{"role": "user", "content": [{"type": "image", "url": doc["image"]},
                                         {"type": "text", "text": doc["question"]}]}]


def _requests(gen_kwargs: list[dict[str, Any]]) -> tuple[list[FakeInstance], dict[str, Any]]:
    docs = [{"image": Image.new("RGB", (10 + i, 8)), "question": f"<image>Question {i}?"}
            for i in range(len(gen_kwargs))]
    requests = [FakeInstance(("ctx", _messages, kwargs, i, "task", "test")) for i, kwargs in enumerate(gen_kwargs)]
    return requests, {"task": {"test": docs}}


def test_requests_become_prompts_batched_by_settings_in_request_order() -> None:
    greedy = {"max_new_tokens": 16, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    sampled = {"max_new_tokens": 16, "temperature": 0.7, "do_sample": True, "top_p": 0.9}
    requests, task_dict = _requests([greedy, {"max_new_tokens": 8}, greedy, sampled, greedy])
    answerer = RecordingAnswerer()
    progress: list[int] = []
    answers = ChatAnswering(answerer, batch_size=2).generate(requests, task_dict, progress.append)
    # The literal <image> is dropped (our template places the image); `until` cuts the answer.
    assert answers[0] == "Question 0? | 10" and answers[2] == "Question 2? | 12"
    assert answers[1] == "Question 1? | 11\n\nrambling".strip()  # no `until` given: nothing cut
    assert [(c[0], c[1], c[2]) for c in answerer.calls] == [
        (["Question 0?", "Question 2?"], 16, {}), (["Question 4?"], 16, {}), (["Question 1?"], 8, {}),
        (["Question 3?"], 16, {"do_sample": True, "temperature": 0.7, "top_p": 0.9})]
    assert sum(progress) == 5


def test_default_limit_and_string_stop() -> None:
    requests, task_dict = _requests([{"until": "?"}])
    request = read_request(requests[0].args, task_dict)
    assert request.max_new_tokens == lmms_plugin.DEFAULT_MAX_NEW_TOKENS and request.until == ["?"]
    assert cut_at_stops(" Yes. ASSISTANT: more", ["ASSISTANT:", "\n\n"]) == "Yes."


def test_bad_requests_are_refused_with_their_place() -> None:
    requests, task_dict = _requests([{}])
    task_dict["task"]["test"][0]["image"] = None

    def text_only(doc: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]

    with pytest.raises(ValueError, match="task/test/0: the request has no image"):
        read_request(("ctx", text_only, {}, 0, "task", "test"), task_dict)
    with pytest.raises(ValueError, match="--force_simple"):
        read_request(("ctx", {}, None, 0, "task", "test")[1:], task_dict)

    def video(doc: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "video", "url": "clip.mp4"}]}]

    with pytest.raises(ValueError, match="not 'video'"):
        read_request(("ctx", video, {}, 0, "task", "test"), task_dict)


@pytest.fixture(scope="module")
def model_dir(make_tiny_vlm: Callable[..., Path]) -> Path:
    return make_tiny_vlm("pluginmodel")


def test_plugin_answers_as_the_evaluator_does(model_dir: Path, tiny_world: Path) -> None:
    rows = load_rows(tiny_world / "benchmarks", "gqa")[:3]
    docs = [{"image": row_image(r), "question": build_prompt("gqa", r)} for r in rows]
    requests = [FakeInstance(("ctx", _messages, {"max_new_tokens": 6}, i, "gqa", "testdev")) for i in range(3)]
    answerer = Answerer(model_dir, torch.device("cpu"))
    answers = ChatAnswering(answerer, batch_size=2).generate(requests, {"gqa": {"testdev": docs}})
    expected = [answerer.answer([d["image"]], [d["question"]], 6)[0] for d in docs]
    assert answers == expected


def test_entry_point_is_declared_and_lmms_eval_stays_optional() -> None:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    module, attribute = project["entry-points"]["lmms_eval.models"]["mllm"].split(":")
    assert module == lmms_plugin.__name__ and callable(getattr(lmms_plugin, attribute))
    assert not any(d.startswith(("lmms-eval", "lmms_eval", "torchvision")) for d in project["dependencies"])
    if importlib.util.find_spec("lmms_eval") is None:
        assert "lmms_eval" not in sys.modules
        with pytest.raises(ModuleNotFoundError, match="lmms_eval"):
            lmms_plugin.MllmChat  # noqa: B018 - the attribute access is what builds the class


def _local_task(folder: Path, builtin: Path, name: str, data: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(f"include: {builtin}\ntask: {name}\ndataset_path: parquet\n"
                                         f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n")


def test_lmms_eval_runs_the_plugin_offline_on_local_tasks(model_dir: Path, tiny_world: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    lmms_eval = pytest.importorskip("lmms_eval", reason=LMMS_EVAL_MISSING)
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    for variable in ("HF_DATASETS_CACHE", "LMMS_EVAL_DATASETS_CACHE"):
        monkeypatch.setenv(variable, str(tmp_path / "hf"))
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model, list_available_models
    from lmms_eval.tasks import TaskManager

    from mllm.eval import runner

    if "mllm" not in list_available_models():
        pytest.fail("lmms-eval does not list the mllm entry point: reinstall this package (pip install -e .)")
    assert get_model("mllm").__name__ == "MllmChat"  # resolved through the entry point
    builtin = Path(lmms_eval.__file__).parent / "tasks"
    tasks = tmp_path / "tasks"
    _local_task(tasks, builtin / "pope" / "pope.yaml", "pope_local", tiny_world / "benchmarks" / "pope.parquet")
    _local_task(tasks, builtin / "mme" / "mme.yaml", "mme_local", tiny_world / "benchmarks" / "mme.parquet")

    # The real model generates; its answers are then swapped for a mix of forms the scorers parse differently,
    # so that lmms-eval's metrics and ours are compared on more than empty strings.
    forms = ["Yes", "no", "Yes.", "No, there is not.", "yes", "No"]
    prompts_seen: list[str] = []
    original = runner.Answerer.answer

    def mixed(self: runner.Answerer, images: list[Any], prompts: list[str], max_new: int, **kw: Any) -> list[str]:
        original(self, images, prompts, max_new, **kw)
        prompts_seen.extend(prompts)
        return [forms[sum(map(ord, p)) % len(forms)] for p in prompts]

    monkeypatch.setattr(runner.Answerer, "answer", mixed)
    out = simple_evaluate(model="mllm", model_args=f"pretrained={model_dir},device=cpu", batch_size=4,
                          tasks=["pope_local", "mme_local"], log_samples=True, bootstrap_iters=0,
                          task_manager=TaskManager(include_path=str(tasks), include_defaults=False, model_name="mllm"))
    for name, task in (("pope", "pope_local"), ("mme", "mme_local")):
        rows = load_rows(tiny_world / "benchmarks", name)
        assert {build_prompt(name, r) for r in rows} <= set(prompts_seen)  # lmms-eval asked our prompts
        samples = sorted(out["samples"][task], key=lambda s: int(s["doc_id"]))
        docs = [{k: v for k, v in r.items() if k != "image"} for r in rows]
        ours = score_benchmark(name, docs, [s["filtered_resps"][0] for s in samples])
        theirs = out["results"][task]
        if name == "pope":
            for metric in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
                key = "pope_f1_score,none" if metric == "f1" else f"pope_{metric},none"
                assert ours[metric] == pytest.approx(100.0 * theirs[key]), metric
        else:
            assert ours["perception"] == pytest.approx(theirs["mme_perception_score,none"])
            # lmms-eval reports no cognition score where no row has a cognition category (as in the world).
            assert ours["cognition"] == pytest.approx(theirs.get("mme_cognition_score,none", 0.0))
