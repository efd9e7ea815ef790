"""Generation off the event loop, with a bounded queue shared by the web demo and the HTTP API.

At most `workers` generations run at once, each in a worker thread; at most `queue` more wait for one.
A request beyond that is refused at once (ServerBusy) instead of piling up, so a flood of requests costs
the server nothing but the refusals.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from transformers import TextIteratorStreamer

from mllm.serve.chat import ChatSession, GenerationSettings, Prompt, Reply

log = logging.getLogger(__name__)


class ServerBusy(RuntimeError):
    """Every generation slot and every queue place is taken."""


@dataclass
class StreamingReply:
    """A generation under way: its text pieces as they come, then the finished Reply (or its error)."""

    future: Future[Reply]
    streamer: TextIteratorStreamer
    cancel: threading.Event

    def texts(self) -> Iterator[str]:
        """The pieces, trimmed so that they join to exactly the finished reply's text (which is stripped);
        leaving early (a client that went away) cancels the generation."""
        started, held = False, ""
        try:
            for piece in self.streamer:
                text = held + piece
                kept = text.rstrip()
                held = text[len(kept):]  # trailing whitespace waits until more text follows it
                if not started:
                    kept = kept.lstrip()
                if kept:
                    started = True
                    yield kept
        finally:
            self.cancel.set()


class GenerationPool:
    def __init__(self, workers: int, queue: int) -> None:
        if workers < 1 or queue < 0:
            raise ValueError(f"need at least one worker and a queue of zero or more, got {workers} and {queue}")
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="generate")
        self.capacity = workers + queue
        self._lock = threading.Lock()
        self.admitted = 0
        self.running = 0

    def submit(self, job: Callable[..., Reply], *args: Any) -> Future[Reply]:
        """Run `job(*args)` in a worker thread, or raise ServerBusy when the queue is full."""
        with self._lock:
            if self.admitted >= self.capacity:
                raise ServerBusy(f"all {self.capacity} generation places are taken; retry in a moment")
            self.admitted += 1
        future = self._executor.submit(self._run, job, *args)
        future.add_done_callback(self._release)
        return future

    def _run(self, job: Callable[..., Reply], *args: Any) -> Reply:
        with self._lock:
            self.running += 1
        try:
            return job(*args)
        finally:
            with self._lock:
                self.running -= 1

    def _release(self, _: Future[Reply]) -> None:
        with self._lock:
            self.admitted -= 1

    def stream(self, session: ChatSession, prompt: Prompt, settings: GenerationSettings) -> StreamingReply:
        """Start generating the reply to `prompt`, its text streamed as it comes."""
        streamer = TextIteratorStreamer(session.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()

        def job() -> Reply:
            try:
                return session.generate(prompt, settings, streamer, cancel)
            except BaseException:
                streamer.end()  # the reader waits for the end of the stream, which a failed generate never sends
                raise

        future = self.submit(job)
        # A job cancelled before it ran (at shutdown) must still end the stream its reader waits on.
        future.add_done_callback(lambda done: streamer.end() if done.cancelled() else None)
        return StreamingReply(future, streamer, cancel)

    def status(self) -> dict[str, int]:
        with self._lock:
            return {"running": self.running, "waiting": self.admitted - self.running, "capacity": self.capacity}

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
