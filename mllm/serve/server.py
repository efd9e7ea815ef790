"""`mllm serve`: the gradio chat demo at `/` and an OpenAI-compatible API, in one FastAPI process.

Routes: `POST /v1/chat/completions` (streamed as server-sent events with `stream: true`), `GET /v1/models`,
`GET /health`, and the demo. Safe by default: it binds to loopback, refuses remote image URLs unless their
host is allowed, never reads local files a request names, bounds the body, image bytes and pixels, new
tokens and waiting generations (503 once the queue is full), and turns a failed generation into a 500 JSON
error while it keeps serving. Generation runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from mllm.data.conversation import ConversationError
from mllm.serve.api import ApiError, ApiLimits, ChatRequest, Completion, parse_chat_request, server_sent_event
from mllm.serve.chat import ChatSession, Prompt
from mllm.serve.images import ImageLimits
from mllm.serve.pool import GenerationPool, ServerBusy, StreamingReply
from mllm.serve.web import build_demo

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class ServeConfig:
    """Options of `mllm serve`."""

    model: str = "runs/train/instruct/model"
    host: str = "127.0.0.1"  # loopback: other machines cannot connect unless this is changed (e.g. to 0.0.0.0)
    port: int = 7860
    load_in_4bit: bool = field(default=False, metadata={"flag": True, "help": "load the LM in 4 bits (bitsandbytes)"})
    load_in_8bit: bool = field(default=False, metadata={"flag": True, "help": "load the LM in 8 bits (bitsandbytes)"})
    device: str = "auto"
    model_name: str | None = None  # the id /v1/models lists; the model folder's name when None
    examples: str | None = None  # a folder (e.g. a synthetic world) whose first few images the demo offers
    allow_image_hosts: list[str] = field(default_factory=list)  # hosts http(s) image URLs may name; none by default
    max_body_bytes: int = 20 * 2**20
    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_images: int = 4  # per request
    max_tokens: int = 1024  # the most new tokens one request may ask for
    default_max_tokens: int = 256
    max_concurrent: int = 1  # generations running at once
    max_queue: int = 8  # generations waiting for a slot; one more is refused with 503
    max_connections: int = 64  # open connections before uvicorn answers 503

    @property
    def quantization(self) -> str | None:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("choose one of --load_in_4bit and --load_in_8bit")
        return "4bit" if self.load_in_4bit else "8bit" if self.load_in_8bit else None

    def api_limits(self) -> ApiLimits:
        images = ImageLimits(self.max_image_bytes, self.max_image_pixels, list(self.allow_image_hosts))
        return ApiLimits(self.max_tokens, min(self.default_max_tokens, self.max_tokens), self.max_images, images)


def example_images(folder: str | None, count: int = 4) -> list[Path]:
    """The first `count` images under `folder` (sorted, so the demo offers the same ones each time)."""
    if folder is None:
        return []
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"examples folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES)[:count]


class BodyLimit:
    """ASGI middleware: a request (to the API or the demo) that declares a body over `limit` bytes gets 413
    before any of it is read. Bodies sent without a length are counted where they are read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope.get("headers", [])).get(b"content-length", b"") if scope["type"] == "http" else b""
        if declared.isdigit() and int(declared) > self.limit:
            error = ApiError(413, f"the request body is {int(declared)} bytes, more than the limit of {self.limit}",
                             None, "request_too_large")
            await _error(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 once more than `limit` bytes have come."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is more than the limit of {limit} bytes", None, "request_too_large")
    return bytes(body)


def _error(err: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _server_error(err: BaseException) -> ApiError:
    log.error("generation failed", exc_info=err)
    return ApiError(500, f"generation failed: {type(err).__name__}: {err}", None, "generation_failed", "server_error")


class ChatService:
    """The API's handlers over one loaded session and the generation pool it shares with the demo."""

    def __init__(self, session: ChatSession, pool: GenerationPool, cfg: ServeConfig, model_id: str) -> None:
        self.session, self.pool, self.cfg, self.model_id = session, pool, cfg, model_id
        self.limits = cfg.api_limits()
        self.started = int(time.time())

    def _prepare(self, body: Any) -> tuple[ChatRequest, Prompt]:
        """Runs in a worker thread: images are decoded (or fetched) and the prompt tokenized here."""
        request = parse_chat_request(body, self.limits)
        try:
            prompt = self.session.prepare(request.messages, request.images, request.settings.max_new_tokens)
        except ConversationError as err:
            raise ApiError(400, str(err), "messages", "invalid_conversation") from err
        return request, prompt

    async def chat_completions(self, request: Request) -> Response:
        try:
            raw = await _read_body(request, self.cfg.max_body_bytes)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ApiError(400, f"the request body is not valid JSON: {err}", None, "invalid_json") from err
            parsed, prompt = await run_in_threadpool(self._prepare, body)
            completion = Completion(self.model_id)
            if parsed.stream:
                streaming = self.pool.stream(self.session, prompt, parsed.settings)
                return StreamingResponse(self._events(streaming, completion, parsed.include_usage),
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            future = self.pool.submit(self.session.generate, prompt, parsed.settings)
            try:
                reply = await asyncio.wrap_future(future)
            except Exception as err:  # noqa: BLE001 - any failure of generate is answered, never fatal
                raise _server_error(err) from err
            return JSONResponse(completion.response(reply))
        except ServerBusy as err:
            return _error(ApiError(503, str(err), None, "server_busy", "server_error"), {"Retry-After": "1"})
        except ApiError as err:
            return _error(err)

    def _events(self, streaming: StreamingReply, completion: Completion, include_usage: bool) -> Iterator[str]:
        """Server-sent events; a sync generator, so Starlette iterates it in a worker thread."""
        yield server_sent_event(completion.chunk({"role": "assistant", "content": ""}))
        for text in streaming.texts():
            yield server_sent_event(completion.chunk({"content": text}))
        try:
            reply = streaming.future.result()
        except Exception as err:  # noqa: BLE001 - the stream has begun: the error goes in it as an event
            yield server_sent_event(_server_error(err).body())
        else:
            yield server_sent_event(completion.chunk({}, reply.finish_reason))
            if include_usage:
                yield server_sent_event(completion.usage_chunk(reply))
        yield server_sent_event("[DONE]")

    def models(self) -> dict[str, Any]:
        model = {"id": self.model_id, "object": "model", "created": self.started, "owned_by": "mllm"}
        return {"object": "list", "data": [model]}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_id, "generations": self.pool.status()}


def create_app(session: ChatSession, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app: the API routes, then the gradio demo mounted at `/`."""
    pool = GenerationPool(cfg.max_concurrent, cfg.max_queue)
    service = ChatService(session, pool, cfg, cfg.model_name or Path(cfg.model).resolve().name)
    app = FastAPI(title="mllm serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/v1/chat/completions", service.chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", service.models, methods=["GET"])
    app.add_api_route("/health", service.health, methods=["GET"])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(ApiError(err.status_code, str(err.detail), None, None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, err: Exception) -> JSONResponse:
        return _error(_server_error(err))

    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.router.on_shutdown.append(pool.shutdown)
    examples = example_images(cfg.examples)
    demo = build_demo(session, pool, cfg.api_limits(), examples)
    return gr.mount_gradio_app(app, demo, path="/", ssr_mode=False,
                               max_file_size=cfg.max_image_bytes, server_name=cfg.host, server_port=cfg.port,
                               footer_links=[], mcp_server=False)


def run_serve(cfg: ServeConfig) -> None:
    import uvicorn

    quantization = cfg.quantization
    if cfg.host not in LOOPBACK:
        log.warning("serving on %s: other machines can reach this server", cfg.host)
    # Pillow then refuses oversized images wherever they are decoded, the demo's uploads included (it warns
    # above the limit and raises above twice it); set here, for the server process only, not in create_app.
    Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels
    session = ChatSession.load(cfg.model, cfg.device, quantization)
    app = create_app(session, cfg)
    log.info("mllm serve: demo at http://%s:%d/, API at /v1/chat/completions", cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, limit_concurrency=cfg.max_connections, log_level="info")


class BackgroundServer:
    """`app` served by uvicorn in a daemon thread, on a socket bound before the thread starts (port 0: a free
    one, so `url` is known at once); for notebooks and tests. Use as a context manager."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, max_connections: int = 64) -> None:
        import uvicorn

        self._socket = socket.create_server((host, port))
        self.url = f"http://{host}:{self._socket.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, limit_concurrency=max_connections, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
