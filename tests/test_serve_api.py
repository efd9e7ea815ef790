"""`mllm serve` over real HTTP on loopback: answers equal the session's, streams reassemble to them, usage
counts, every refusal is a 4xx in OpenAI's error shape, a flood is answered or cleanly refused, failures
stay contained, and quantized or pickled checkpoints load (or are refused) as they should."""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image

from mllm.cli import main
from mllm.serve.chat import ChatSession, GenerationSettings
from mllm.serve.loading import load_model
from mllm.serve.server import BackgroundServer, ServeConfig, create_app

QUESTION = "What colour is the star?"


@pytest.fixture(scope="module")
def model_dir(make_tiny_vlm: Callable[..., Path]) -> Path:
    return make_tiny_vlm("servemodel", varied_text=True)


@pytest.fixture(scope="module")
def session(model_dir: Path) -> ChatSession:
    return ChatSession.load(model_dir, "cpu")


@pytest.fixture(scope="module")
def server(session: ChatSession, model_dir: Path) -> Iterator[str]:
    cfg = ServeConfig(model=str(model_dir), max_body_bytes=200_000, max_image_bytes=100_000,
                      max_image_pixels=128 * 128, max_tokens=32, default_max_tokens=8, max_concurrent=1, max_queue=4,
                      allow_image_hosts=["127.0.0.1"])
    with BackgroundServer(create_app(session, cfg)) as running:
        yield running.url


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def world_image(tiny_world: Path) -> Image.Image:
    return Image.open(sorted((tiny_world / "images").rglob("*.jpg"))[0]).convert("RGB")


def image_question(url: str, **options: Any) -> dict[str, Any]:
    parts = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": "model", "messages": [{"role": "user", "content": parts}], **options}


def header_only_png(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims a `width` x `height` canvas: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(4096))) + chunk(b"IEND",
                                                                                                            b"")


def post(server: str, payload: Any, **options: Any) -> httpx.Response:
    return httpx.post(f"{server}/v1/chat/completions", json=payload, timeout=60, **options)


def assert_openai_error(response: httpx.Response, status: int, param: str | None, says: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and says in error["message"], error


def test_health_models_and_the_demo_page(server: str) -> None:
    health = httpx.get(f"{server}/health").json()
    assert health == {"status": "ok", "model": "model", "generations": {"running": 0, "waiting": 0, "capacity": 5}}
    models = httpx.get(f"{server}/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["model"]
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_answer_is_the_sessions_greedy_answer_with_usage(server: str, session: ChatSession,
                                                         world_image: Image.Image) -> None:
    response = post(server, image_question(data_url(world_image), max_tokens=12))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = session.complete([{"role": "user", "content": f"<image>\n{QUESTION}"}], [world_image],
                                GenerationSettings(12))
    assert expected.text and body["choices"][0]["message"] == {"role": "assistant", "content": expected.text}
    assert body["choices"][0]["finish_reason"] == expected.finish_reason
    assert body["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": expected.completion_tokens,
                             "total_tokens": expected.prompt_tokens + expected.completion_tokens}
    assert expected.prompt_tokens > session.model.num_image_tokens and expected.completion_tokens <= 12


def test_stream_reassembles_to_the_unstreamed_answer(server: str, world_image: Image.Image) -> None:
    request = image_question(data_url(world_image), max_tokens=16)
    whole = post(server, request).json()
    events = []
    with httpx.stream("POST", f"{server}/v1/chat/completions", timeout=60,
                      json={**request, "stream": True, "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len([d for d in deltas if d]) > 1  # it did stream, in several pieces
    assert "".join(deltas) == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"] and len({c["id"] for c in chunks}) == 1


def test_text_only_multi_turn_conversation(server: str) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": [{"type": "text", "text": "?"}]}]
    response = post(server, {"messages": messages, "max_tokens": 4, "temperature": 0.7, "top_p": 0.9})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 4


def test_remote_image_from_an_allowed_host_is_fetched(server: str, world_image: Image.Image) -> None:
    png = base64.b64decode(data_url(world_image).partition(",")[2])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self.send_response(200)
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: Any) -> None:
            pass

    images = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    try:
        response = post(server, image_question(f"http://127.0.0.1:{images.server_port}/star.png", max_tokens=3))
    finally:
        images.shutdown()
    assert response.status_code == 200, response.text


IMAGE_AT = "messages[0].content[1].image_url"
REFUSALS = {  # request body, status, the param named, what the message says
    "remote host not allowed": (image_question("https://example.com/cat.png"), 400, IMAGE_AT, "not allowed"),
    "file URL": (image_question("file:///etc/hostname"), 400, IMAGE_AT, "never reads local files"),
    "bare path": (image_question("/etc/hostname"), 400, IMAGE_AT, "never reads local files"),
    "decompression bomb": (image_question("data:image/png;base64," + base64.b64encode(
        header_only_png(100_000, 100_000)).decode()), 400, IMAGE_AT, "decompression bomb"),
    "too many pixels": (image_question(data_url(Image.new("RGB", (200, 200), "red"))), 400, IMAGE_AT,
                        "more than the limit of 16384"),
    "image bytes": (image_question("data:image/png;base64," + base64.b64encode(bytes(110_000)).decode()), 400,
                    IMAGE_AT, "limit of 100000 bytes"),
    "not an image": (image_question("data:image/png;base64," + base64.b64encode(b"hello").decode()), 400, IMAGE_AT,
                     "not a readable image"),
    "missing messages": ({"model": "model"}, 400, "messages", "missing required field 'messages'"),
    "unsupported part": ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400,
                         "messages[0].content[0].type", 'unsupported type "input_audio"'),
    "max_tokens too large": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 33}, 400, "max_tokens",
                             "more than this server's limit of 32"),
    "temperature out of range": ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400,
                                 "temperature", "must be in [0.0, 2.0]"),
    "last turn not the user's": ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0].role",
                                 "last message must be a user message"),
    "image marker in text": ({"messages": [{"role": "user", "content": "<image> hi"}]}, 400, "messages[0].content",
                             "may not contain <image>"),
    "unknown role": ({"messages": [{"role": "tool", "content": "hi"}]}, 400, "messages[0].role", "is not supported"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_say_what_is_wrong(server: str, case: str) -> None:
    body, status, param, says = REFUSALS[case]
    assert_openai_error(post(server, body), status, param, says)


def test_bad_json_and_oversized_bodies_are_refused(server: str) -> None:
    bad = httpx.post(f"{server}/v1/chat/completions", content=b'{"messages": [', timeout=60)
    assert_openai_error(bad, 400, None, "not valid JSON")
    oversized = post(server, {"messages": [{"role": "user", "content": "x" * 250_000}]})
    assert_openai_error(oversized, 413, None, "more than the limit of 200000")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the server has to count
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}]}'

    streamed = httpx.post(f"{server}/v1/chat/completions", content=chunked(), timeout=60)
    assert_openai_error(streamed, 413, None, "more than the limit of 200000")


def test_a_failed_generation_is_a_500_and_the_server_goes_on(server: str, session: ChatSession,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(session, "generate", broken)
    failed = post(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert_openai_error(failed, 500, None, "RuntimeError: out of memory, say")
    assert failed.json()["error"]["type"] == "server_error"
    monkeypatch.undo()
    assert post(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200


def test_twenty_concurrent_requests_are_answered_or_cleanly_refused(server: str, session: ChatSession,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    release, generate = threading.Event(), session.generate

    def held(*args: Any, **kwargs: Any) -> Any:  # hold the single slot so the queue fills deterministically
        release.wait(timeout=30)
        return generate(*args, **kwargs)

    monkeypatch.setattr(session, "generate", held)
    request = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with ThreadPoolExecutor(20) as threads:
        futures = [threads.submit(post, server, request) for _ in range(20)]
        deadline = time.monotonic() + 30
        while sum(f.done() for f in futures) < 15 and time.monotonic() < deadline:
            time.sleep(0.05)
        during = httpx.get(f"{server}/health", timeout=10).json()["generations"]
        release.set()
        responses = [f.result() for f in futures]
    assert during == {"running": 1, "waiting": 4, "capacity": 5}
    assert Counter(r.status_code for r in responses) == {200: 5, 503: 15}
    refused = next(r for r in responses if r.status_code == 503)
    assert_openai_error(refused, 503, None, "generation places are taken")
    assert refused.headers["retry-after"] == "1"
    monkeypatch.undo()
    assert httpx.get(f"{server}/health").json()["generations"] == {"running": 0, "waiting": 0, "capacity": 5}
    assert post(server, request).status_code == 200


def test_serve_refuses_two_quantizations_and_binds_to_loopback_by_default(model_dir: Path) -> None:
    assert ServeConfig().host == "127.0.0.1"
    with pytest.raises(SystemExit, match="choose one of --load_in_4bit and --load_in_8bit"):
        main(["serve", "--model", str(model_dir), "--load-in-4bit", "--load_in_8bit"])


def test_4bit_loading_quantizes_the_lm_only(model_dir: Path, world_image: Image.Image) -> None:
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    model, tokenizer = load_model(model_dir, torch.device("cpu"), "4bit")
    assert isinstance(model.llm.model.layers[0].mlp.up_proj, Linear4bit)
    assert not any(isinstance(m, Linear4bit) for m in [*model.tower.modules(), *model.connector.modules()])
    reply = ChatSession(model, tokenizer, torch.device("cpu")).complete(
        [{"role": "user", "content": f"<image>\n{QUESTION}"}], [world_image], GenerationSettings(4))
    assert 1 <= reply.completion_tokens <= 4


def test_pickled_checkpoints_are_refused(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "model")
    (copy / "llm" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"pickled weights \(llm/pytorch_model.bin\)"):
        load_model(copy, torch.device("cpu"))
