"""`mllm chat`: talk to a saved VLM in the terminal.

With `--prompt` it prints one answer and exits (greedy by default, so the output is reproducible); without,
it opens a REPL whose commands are `/image PATH` (start a conversation about another image), `/reset`
(forget the conversation, keep the image) and `/quit`. Replies stream token by token. The conversation is
rendered with the chat template saved in the model folder, exactly as training rendered it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import TextStreamer

from mllm.data.conversation import encode_dialogue_prompt
from mllm.data.images import to_tensor
from mllm.data.templates import end_of_turn_ids
from mllm.llm import IMAGE_TOKEN
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


class ChatSession:
    """A multi-turn conversation about at most one image; the image goes with the first user turn."""

    def __init__(self, model: VisionLanguageModel, tokenizer: Any, device: torch.device) -> None:
        self.model, self.tokenizer, self.device = model.to(device).eval(), tokenizer, device
        self.stop_ids = end_of_turn_ids(tokenizer)
        self.image: Image.Image | None = None
        self.messages: list[dict[str, str]] = []

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto") -> ChatSession:
        model, tokenizer = VisionLanguageModel.from_pretrained(Path(folder))
        return cls(model, tokenizer, pick_device(device))

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
        ids = encode_dialogue_prompt(self.tokenizer, messages, self.model.num_image_tokens)
        pixels = None
        if self.image is not None:
            pixels = to_tensor(self.image, self.model.tower.image).unsqueeze(0).to(self.device)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {}
        out = self.model.generate(
            torch.tensor([ids], device=self.device), torch.ones(1, len(ids), dtype=torch.long, device=self.device),
            pixels, max_new_tokens, self.stop_ids, self.tokenizer.pad_token_id, streamer=streamer, **sampling,
        )
        reply = self.tokenizer.decode(out[0], skip_special_tokens=True).strip()
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
