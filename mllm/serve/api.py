"""The OpenAI chat-completions format: requests checked field by field, responses and stream chunks.

A message's content is a string or a list of parts, `{"type": "text", "text": ...}` and
`{"type": "image_url", "image_url": {"url": ...}}`. Images may appear in user messages only; whatever the
order of the parts, a message's images go before its text as `<image>\\n` markers, the layout the model
was trained on (LLaVA's). Every refusal is an ApiError carrying an HTTP status and OpenAI's error shape
{"error": {"message", "type", "param", "code"}}, naming the field at fault.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from mllm.llm import IMAGE_TOKEN
from mllm.serve.chat import GenerationSettings, Reply
from mllm.serve.images import ImageLimits, ImageRefused, load_image_url

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """A request answered with an error: HTTP `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ApiLimits:
    max_tokens: int = 1024  # the most new tokens a request may ask for
    default_max_tokens: int = 256
    max_images: int = 4  # per request
    images: ImageLimits = field(default_factory=ImageLimits)


@dataclass
class ChatRequest:
    """A checked chat-completions request: messages in the model's form (with `<image>` markers) and images."""

    messages: list[dict[str, str]]
    images: list[Image.Image]
    settings: GenerationSettings
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"{name} must be a number, got {json.dumps(value)}", name, "invalid_type")
    if value > high or value < low or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise ApiError(400, f"{name} must be in {bounds}, got {value}", name, "invalid_value")
    return float(value)


def _max_tokens(body: dict[str, Any], limits: ApiLimits) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return limits.default_max_tokens
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"{name} must be a positive integer, got {json.dumps(value)}", name, "invalid_value")
    if value > limits.max_tokens:
        raise ApiError(400, f"{name} is {value}, more than this server's limit of {limits.max_tokens}", name,
                       "max_tokens_too_large")
    return value


def _image(part: dict[str, Any], where: str, limits: ApiLimits) -> Image.Image:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise ApiError(400, f"{where}.image_url must be an object with a string 'url'", f"{where}.image_url",
                       "invalid_type")
    try:
        return load_image_url(url, limits.images)
    except ImageRefused as err:
        raise ApiError(400, f"{where}: {err}", f"{where}.image_url", "image_refused") from err


def _message(message: Any, where: str, limits: ApiLimits) -> tuple[dict[str, str], list[Image.Image]]:
    if not isinstance(message, dict):
        raise ApiError(400, f"{where} must be an object with 'role' and 'content'", where, "invalid_type")
    role = message.get("role")
    if role not in ROLES:
        raise ApiError(400, f"{where}.role {json.dumps(role)} is not supported; use one of {sorted(ROLES)}",
                       f"{where}.role", "invalid_value")
    content = message.get("content")
    if isinstance(content, str):
        texts, images = [content], []
    elif isinstance(content, list):
        texts, images = [], []
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "text":
                raise ApiError(400, f"{at} is a text part without a string 'text'", f"{at}.text", "invalid_type")
            elif kind == "image_url":
                if role != "user":
                    raise ApiError(400, f"{at}: images may only be sent in user messages", at, "invalid_value")
                images.append(_image(part, at, limits))
            else:
                raise ApiError(400, f"{at} has unsupported type {json.dumps(kind)}; supported: text, image_url",
                               f"{at}.type", "unsupported_content_type")
    else:
        raise ApiError(400, f"{where}.content must be a string or a list of parts", f"{where}.content",
                       "invalid_type")
    text = "\n".join(texts)
    if IMAGE_TOKEN in text:
        raise ApiError(400, f"{where}.content may not contain {IMAGE_TOKEN}; send images as image_url parts",
                       f"{where}.content", "invalid_value")
    return {"role": ROLES[role], "content": f"{IMAGE_TOKEN}\n" * len(images) + text}, images


def parse_chat_request(body: Any, limits: ApiLimits) -> ChatRequest:
    """The checked request, or an ApiError that says which field is wrong and why."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "missing required field 'messages'", "messages", "missing_field")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages", "invalid_value")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", "n", "invalid_value")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options", "invalid_type")
    settings = GenerationSettings(_max_tokens(body, limits), _number(body, "temperature", 0.0, 0.0, 2.0),
                                  _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True))
    converted, images = [], []
    for i, message in enumerate(messages):
        turn, turn_images = _message(message, f"messages[{i}]", limits)
        converted.append(turn)
        images += turn_images
        if len(images) > limits.max_images:
            raise ApiError(400, f"more than {limits.max_images} images in one request", "messages", "too_many_images")
    if converted[-1]["role"] != "user":
        raise ApiError(400, "the last message must be a user message", f"messages[{len(messages) - 1}].role",
                       "invalid_value")
    return ChatRequest(converted, images, settings, stream, bool(options.get("include_usage", False)))


@dataclass
class Completion:
    """Identity shared by a response and all its stream chunks."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def response(self, reply: Reply) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": reply.text},
                  "finish_reason": reply.finish_reason}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage(reply)}

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self, reply: Reply) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(reply)}


def usage(reply: Reply) -> dict[str, int]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def server_sent_event(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
