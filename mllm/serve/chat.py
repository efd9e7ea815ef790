"""`mllm chat`: talk to a saved VLM in the terminal.

With `--prompt` it prints one answer and exits (greedy by default, so the output is reproducible); without,
it opens a REPL whose commands are `/image PATH` (start a conversation about another image), `/reset`
(forget the conversation, keep the image) and `/quit`. Replies stream token by token. The conversation is
rendered with the chat template saved in the model folder, exactly as training rendered it.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from mllm.data.conversation import ConversationError, encode_dialogue_prompt
from mllm.data.templates import end_of_turn_ids
from mllm.llm import IMAGE_TOKEN
from mllm.serve.loading import load_model
from mllm.train_stages.pretrain import pick_device
from mllm.vlm import VisionLanguageModel

log = logging.getLogger(__name__)

HELP = "commands: /image PATH (new conversation about that image), /reset (forget the conversation), /quit"


@dataclass
class ChatConfig:
    """Options of `mllm chat`."""

    model: str = "runs/train/instruct/model"
    image: str | None = None
    prompt: str | None = None  # one question, one answer; without it a REPL opens
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    device: str = "auto"


def load_image(path: str | Path) -> Image.Image:
    """An RGB image from a local file, with an error that names the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"unreadable image {path}: {err}") from err


@dataclass
class GenerationSettings:
    """How one reply is generated: greedy when temperature is 0, else sampled with nucleus `top_p`."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class Reply:
    """A generated reply and what it cost, in tokens."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop": an end-of-turn token came; "length": max_new_tokens ran out first


@dataclass
class Prompt:
    """Token ids of a conversation ready for the reply, with its images' pixels (and sizes, AnyRes only)."""

    ids: list[int]
    pixels: torch.Tensor | None
    image_sizes: torch.Tensor | None


class _Cancelled(StoppingCriteria):
    """Stops generation once `event` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ChatSession:
    """A multi-turn conversation about at most one image; the image goes with the first user turn.

    `prepare` and `generate` (or `complete`, both at once) answer any message list without touching the
    session's own conversation, so one loaded session also serves the web demo's and the HTTP API's requests."""

    def __init__(self, model: VisionLanguageModel, tokenizer: Any, device: torch.device) -> None:
        self.model, self.tokenizer, self.device = model.to(device).eval(), tokenizer, device
        self.stop_ids = end_of_turn_ids(tokenizer)
        self.image: Image.Image | None = None
        self.messages: list[dict[str, str]] = []

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", quantization: str | None = None) -> ChatSession:
        resolved = pick_device(device)
        model, tokenizer = load_model(Path(folder), resolved, quantization)
        return cls(model, tokenizer, resolved)

    @property
    def context_length(self) -> int | None:
        """The LM's position limit, where its config states one."""
        return getattr(self.model.llm.config, "max_position_embeddings", None)

    def prepare(self, messages: list[dict[str, str]], images: list[Image.Image], max_new_tokens: int) -> Prompt:
        """The prompt for the assistant's reply to `messages`, which end with a user turn and hold one `<image>`
        per image, in order; a ConversationError says why it cannot be answered."""
        markers = sum(message["content"].count(IMAGE_TOKEN) for message in messages)
        if markers != len(images):
            raise ConversationError(f"{markers} {IMAGE_TOKEN} markers for {len(images)} images")
        pixels = sizes = None
        counts: int | list[int] = self.model.num_image_tokens
        if images:
            pixels, sizes, counts = self.model.preprocess_images(images)
            pixels, sizes = pixels.to(self.device), None if sizes is None else sizes.to(self.device)
        ids = encode_dialogue_prompt(self.tokenizer, messages, counts)
        limit = self.context_length
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise ConversationError(f"the prompt's {len(ids)} tokens plus {max_new_tokens} new tokens exceed the "
                                    f"model's context of {limit} tokens")
        return Prompt(ids, pixels, sizes)

    def generate(self, prompt: Prompt, settings: GenerationSettings, streamer: Any = None,
                 cancel: threading.Event | None = None) -> Reply:
        """The reply to a prepared prompt; text pieces go to `streamer` as they come, and setting `cancel`
        ends generation early (a client that went away)."""
        options: dict[str, Any] = ({"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
                                   if settings.temperature > 0 else {})
        if cancel is not None:
            options["stopping_criteria"] = StoppingCriteriaList([_Cancelled(cancel)])
        ids = prompt.ids
        out = self.model.generate(
            torch.tensor([ids], device=self.device), torch.ones(1, len(ids), dtype=torch.long, device=self.device),
            prompt.pixels, settings.max_new_tokens, self.stop_ids, self.tokenizer.pad_token_id,
            image_sizes=prompt.image_sizes, streamer=streamer, **options,
        )
        generated = out[0].tolist()
        stopped = bool(generated) and generated[-1] in self.stop_ids
        return Reply(self.tokenizer.decode(generated, skip_special_tokens=True).strip(), len(ids), len(generated),
                     "stop" if stopped else "length")

    def complete(self, messages: list[dict[str, str]], images: list[Image.Image], settings: GenerationSettings,
                 streamer: Any = None) -> Reply:
        """`prepare` then `generate`."""
        return self.generate(self.prepare(messages, images, settings.max_new_tokens), settings, streamer)

    def set_image(self, image: Image.Image | None) -> None:
        self.image = image
        self.reset()

    def reset(self) -> None:
        self.messages = []

    def ask(self, text: str, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
            streamer: Any = None) -> str:
        """The model's reply to `text`, which joins the conversation with it."""
        if IMAGE_TOKEN in text:
            raise ValueError(f"the question may not contain {IMAGE_TOKEN}; attach images with /image")
        content = f"{IMAGE_TOKEN}\n{text}" if self.image is not None and not self.messages else text
        messages = [*self.messages, {"role": "user", "content": content}]
        images = [self.image] if self.image is not None else []
        reply = self.complete(messages, images, GenerationSettings(max_new_tokens, temperature, top_p), streamer).text
        self.messages = [*messages, {"role": "assistant", "content": reply}]
        return reply


def repl(session: ChatSession, cfg: ChatConfig, lines: Iterable[str], write: Callable[[str], Any]) -> None:
    """Read questions and commands from `lines`, write streamed replies through `write`."""
    streamer = TextStreamer(session.tokenizer, skip_special_tokens=True)
    write(HELP + "\n")
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            write("(conversation cleared)\n")
        elif line.startswith("/image"):
            try:
                session.set_image(load_image(line.removeprefix("/image").strip()))
                write("(new conversation about that image)\n")
            except (FileNotFoundError, ValueError) as err:
                write(f"error: {err}\n")
        elif line.startswith("/"):
            write(f"unknown command {line.split()[0]!r}; {HELP}\n")
        else:
            session.ask(line, cfg.max_new_tokens, cfg.temperature, cfg.top_p, streamer=streamer)


def run_chat(cfg: ChatConfig) -> None:
    session = ChatSession.load(cfg.model, cfg.device)
    if cfg.image is not None:
        session.set_image(load_image(cfg.image))
    if cfg.prompt is not None:
        print(session.ask(cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_p))
        return
    try:
        repl(session, cfg, _terminal_lines(), sys.stdout.write)
    except KeyboardInterrupt:
        sys.stdout.write("\n")


def _terminal_lines() -> Iterator[str]:
    if not sys.stdin.isatty():
        yield from sys.stdin
        return
    while True:
        try:
            yield input("> ")
        except EOFError:
            return
