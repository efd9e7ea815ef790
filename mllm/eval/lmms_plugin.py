"""The lmms-eval plugin: `lmms-eval --model mllm --model_args pretrained=DIR --tasks ...` evaluates a model folder.

pyproject.toml declares the `lmms_eval.models` entry point `mllm = "mllm.eval.lmms_plugin:manifests"`; lmms-eval
0.7.3 calls `manifests()` while it builds its model registry and then imports `MllmChat`, a chat model
(`is_simple = False`). lmms-eval is imported only then, so the default install never needs it (nor the
torchvision it pulls in): `MllmChat` is built on first access (module `__getattr__`).

The request-to-answer logic (`ChatAnswering`) does not touch lmms-eval: a chat request's `args` are
`(context, doc_to_messages, gen_kwargs, doc_id, task, split)`; the messages of the task's document give the
image and the question text, which our chat template wraps exactly as `mllm eval run` does. Generation
honours `max_new_tokens`, `until` and sampling settings; requests are batched by equal settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

log = logging.getLogger(__name__)

MODEL_ID = "mllm"
# lmms-eval's own chat wrappers allow this many new tokens where a task sets no limit.
DEFAULT_MAX_NEW_TOKENS = 1024


def manifests() -> list[Any]:
    """The entry point's payload: one manifest naming the chat class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, chat_class_path=f"{__name__}.MllmChat")]


class AnswersImages(Protocol):
    """What `ChatAnswering` needs of `mllm.eval.runner.Answerer`."""

    def answer(self, images: list[Any], prompts: list[str], max_new_tokens: int, **options: Any) -> list[str]: ...


@dataclass
class ChatRequest:
    """One question for our model, read from an lmms-eval chat request."""

    image: Image.Image
    prompt: str
    max_new_tokens: int
    until: list[str] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)  # empty: greedy

    def settings(self) -> tuple[Any, ...]:
        """Requests with equal settings share a batch."""
        return self.max_new_tokens, tuple(sorted(self.sampling.items()))


def _get(item: Any, key: str) -> Any:
    """A field of a message or content part, whether a dict or lmms-eval's pydantic object."""
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def _as_image(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, (str, Path)) and Path(source).is_file():
        return Image.open(source).convert("RGB")
    raise ValueError(f"cannot read an image from {type(source).__name__} {str(source)[:80]!r}")


def read_messages(messages: Sequence[Any], where: str) -> tuple[Image.Image, str]:
    """The image and the question text of a chat: the user turns' image and text parts, in order.

    Our models answer one image per question: a chat with none is a ValueError, with more the first is used.
    """
    images, texts = [], []
    for message in messages:
        if _get(message, "role") != "user":
            continue
        content = _get(message, "content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts:
            kind = _get(part, "type")
            if kind == "image":
                images.append(_get(part, "url"))
            elif kind == "text":
                # Our template places the image itself; a literal token in the text would add a second one.
                texts.append(str(_get(part, "text")).replace("<image>", "").strip())
            else:
                raise ValueError(f"{where}: mllm models take images and text, not {kind!r}")
    if not images:
        raise ValueError(f"{where}: the request has no image; mllm models answer questions about one image")
    if len(images) > 1:
        log.warning("%s: %d images; mllm models see the first only", where, len(images))
    return _as_image(images[0]), "\n".join(t for t in texts if t)


def read_request(args: Sequence[Any], task_dict: Mapping[str, Any]) -> ChatRequest:
    """A ChatRequest from a chat `generate_until` request's `args`."""
    if len(args) != 6:
        raise ValueError(f"expected a chat request (context, doc_to_messages, gen_kwargs, doc_id, task, split), "
                         f"got {len(args)} arguments: is the model run with --force_simple?")
    _, doc_to_messages, gen_kwargs, doc_id, task, split = args
    image, prompt = read_messages(doc_to_messages(task_dict[task][split][doc_id]), f"{task}/{split}/{doc_id}")
    gen_kwargs = dict(gen_kwargs or {})
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    sampling: dict[str, Any] = {}
    if gen_kwargs.get("do_sample") and temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature}
        if gen_kwargs.get("top_p") is not None:
            sampling["top_p"] = float(gen_kwargs["top_p"])
    max_new_tokens = int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
    return ChatRequest(image, prompt, max_new_tokens, until, sampling)


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """The text before the first of the stop strings (lmms-eval's `until`)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


class ChatAnswering:
    """Answers lmms-eval chat requests with an Answerer, in batches of equal generation settings."""

    def __init__(self, answerer: AnswersImages, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.answerer, self.batch_size = answerer, batch_size

    def generate(self, requests: Sequence[Any], task_dict: Mapping[str, Any],
                 progress: Callable[[int], None] | None = None) -> list[str]:
        """One answer per request (objects with `args`, like lmms-eval's Instance), in request order."""
        parsed = [read_request(request.args, task_dict) for request in requests]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, request in enumerate(parsed):
            groups.setdefault(request.settings(), []).append(index)
        answers = [""] * len(parsed)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                first = parsed[batch[0]]
                texts = self.answerer.answer([parsed[i].image for i in batch], [parsed[i].prompt for i in batch],
                                             first.max_new_tokens, **first.sampling)
                for i, text in zip(batch, texts, strict=True):
                    answers[i] = cut_at_stops(text, parsed[i].until)
                if progress is not None:
                    progress(len(batch))
        return answers


def pick_eval_device(name: str) -> Any:
    """`auto`: this process's GPU under a multi-process launch (LOCAL_RANK), else the first one, else the CPU."""
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _build_chat_class() -> type:
    from lmms_eval.api.model import lmms
    from tqdm import tqdm

    from mllm.eval.runner import Answerer

    class MllmChat(lmms):
        """An mllm model folder as an lmms-eval chat model (generation only)."""

        is_simple = False

        def __init__(self, pretrained: str, device: str | None = "auto", batch_size: int | str = 1,
                     **unused: Any) -> None:
            super().__init__()
            if unused:
                log.info("mllm plugin: ignoring model arguments %s", sorted(unused))
            self.pretrained = pretrained
            self.batch_size_per_gpu = int(batch_size)
            answerer = Answerer(Path(pretrained), pick_eval_device(device or "auto"))
            self.answering = ChatAnswering(answerer, self.batch_size_per_gpu)

        def generate_until(self, requests: list[Any]) -> list[str]:
            with tqdm(total=len(requests), disable=self.rank != 0, desc="mllm answering") as bar:
                return self.answering.generate(requests, self.task_dict, bar.update)

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            raise NotImplementedError("the mllm plugin generates answers only; the eight benchmark tasks "
                                      "(textvqa_val, chartqa, ocrbench, mme, seedbench, scienceqa_img, gqa, pope) "
                                      "use generate_until")

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise NotImplementedError("the mllm plugin answers single-turn questions only")

    MllmChat.__qualname__ = "MllmChat"
    return MllmChat


def __getattr__(name: str) -> Any:
    # Built on first access, so that importing this module never needs lmms-eval.
    if name == "MllmChat":
        cls = _build_chat_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
