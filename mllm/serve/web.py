"""The gradio chat demo: upload an image, ask about it over several turns, watch the reply stream in.

The model's side of the conversation lives in a gr.State as the messages the model sees (the first user
turn carrying `<image>` when an image is loaded); the chatbot shows the same turns without the marker.
Changing the image starts a new conversation, as `/image` does in `mllm chat`. Generation goes through
the same pool as the API, so the demo and API requests share one bounded queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from mllm.data.conversation import ConversationError
from mllm.llm import IMAGE_TOKEN
from mllm.serve.api import ApiLimits
from mllm.serve.chat import ChatSession, GenerationSettings
from mllm.serve.pool import GenerationPool, ServerBusy

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Update = tuple[Messages, Messages, str]  # what the chatbot shows, the model's conversation, the question box


def shown(messages: Messages) -> Messages:
    """The conversation as the chatbot shows it: the image marker is the picture beside it."""
    return [{"role": m["role"], "content": m["content"].replace(f"{IMAGE_TOKEN}\n", "")} for m in messages]


class DemoHandlers:
    """The demo's event handlers over one session and the shared generation pool."""

    def __init__(self, session: ChatSession, pool: GenerationPool, limits: ApiLimits) -> None:
        self.session, self.pool, self.limits = session, pool, limits

    def _stream(self, messages: Messages, image: Image.Image | None, temperature: float, top_p: float,
                max_tokens: float) -> Iterator[Update]:
        """Generate the reply to `messages` (ending with a user turn), showing it as it grows."""
        if image is not None and image.width * image.height > self.limits.images.max_pixels:
            raise gr.Error(f"the image is {image.width}x{image.height} pixels, more than the limit of "
                           f"{self.limits.images.max_pixels}")
        images = [image.convert("RGB")] if image is not None and IMAGE_TOKEN in messages[0]["content"] else []
        settings = GenerationSettings(min(int(max_tokens), self.limits.max_tokens), float(temperature), float(top_p))
        try:
            prompt = self.session.prepare(messages, images, settings.max_new_tokens)
            streaming = self.pool.stream(self.session, prompt, settings)
        except (ConversationError, ServerBusy) as err:
            raise gr.Error(str(err)) from err
        partial = ""
        for text in streaming.texts():
            partial += text
            yield shown([*messages, {"role": "assistant", "content": partial}]), messages[:-1], ""
        try:
            reply = streaming.future.result()
        except Exception as err:  # noqa: BLE001 - shown to the user; the demo keeps running
            log.error("generation failed", exc_info=err)
            raise gr.Error(f"generation failed: {type(err).__name__}: {err}") from err
        conversation = [*messages, {"role": "assistant", "content": reply.text}]
        yield shown(conversation), conversation, ""

    def respond(self, question: str, image: Image.Image | None, conversation: Messages, temperature: float,
                top_p: float, max_tokens: float) -> Iterator[Update]:
        question = question.strip()
        if not question:
            yield shown(conversation), conversation, ""
            return
        if IMAGE_TOKEN in question:
            raise gr.Error(f"the question may not contain {IMAGE_TOKEN}; upload the image instead")
        content = f"{IMAGE_TOKEN}\n{question}" if image is not None and not conversation else question
        yield from self._stream([*conversation, {"role": "user", "content": content}], image, temperature, top_p,
                                max_tokens)

    def regenerate(self, image: Image.Image | None, conversation: Messages, temperature: float, top_p: float,
                   max_tokens: float) -> Iterator[Update]:
        """A new answer to the last question (different when sampling)."""
        if not conversation or conversation[-1]["role"] != "assistant":
            yield shown(conversation), conversation, ""
            return
        yield from self._stream(conversation[:-1], image, temperature, top_p, max_tokens)


def build_demo(session: ChatSession, pool: GenerationPool, limits: ApiLimits, examples: list[Path]) -> gr.Blocks:
    handlers = DemoHandlers(session, pool, limits)
    with gr.Blocks(title="mllm chat", analytics_enabled=False) as demo:
        gr.Markdown("## mllm chat\nUpload an image and ask about it. A new image starts a new conversation.")
        conversation = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"], height=320,
                                 elem_id="image")
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[image], label="Example images")
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0: greedy)")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                max_tokens = gr.Slider(1, limits.max_tokens, value=limits.default_max_tokens, step=1,
                                       label="Max new tokens")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="chatbot")
                question = gr.Textbox(placeholder="Ask about the image and press Enter", show_label=False,
                                      elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    regenerate = gr.Button("Regenerate", elem_id="regenerate")
                    clear = gr.Button("Clear", elem_id="clear")
        controls = [temperature, top_p, max_tokens]
        outputs: list[Any] = [chatbot, conversation, question]
        for trigger in (send.click, question.submit):
            trigger(handlers.respond, [question, image, conversation, *controls], outputs)
        regenerate.click(handlers.regenerate, [image, conversation, *controls], outputs)
        # The instant handlers skip the queue: two queued events from one page in quick succession (an upload
        # and a send) can close the page's event stream before the second event's updates arrive, and its
        # reply then never shows.
        clear.click(lambda: ([], [], ""), None, outputs, queue=False)
        image.change(lambda: ([], []), None, [chatbot, conversation], queue=False)
    return demo
