"""The `mllm serve` demo in a real browser: Playwright drives Debian's headless chromium through an image
upload, two questions whose streamed replies are the model's answers, a new image that starts a new conversation,
and a clear; it saves a screenshot.

Chromium is installed with apt-get when missing; where that cannot be done the test is skipped, and says why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mllm.llm import IMAGE_TOKEN
from mllm.serve.chat import ChatSession, GenerationSettings, load_image
from mllm.serve.pool import GenerationPool
from mllm.serve.server import BackgroundServer, ServeConfig, create_app
from mllm.serve.web import DemoHandlers

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags chromium keeps dialling out, which a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve_screenshot.png"
MAX_TOKENS = 10
BOT_MESSAGES = "#chatbot .bot-row .message-content"


def _install_chromium() -> str | None:
    """Install Debian's chromium; the reason it could not be installed, or None."""
    if shutil.which("apt-get") is None:
        return "chromium is missing and there is no apt-get to install it"
    if os.geteuid() != 0:
        return "chromium is missing and installing it with apt-get needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
        if result.returncode != 0:
            return f"`{' '.join(command)}` failed: {result.stderr.strip()[-400:]}"
    return None if CHROMIUM.exists() else f"apt-get installed chromium but {CHROMIUM} is not there"


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = _install_chromium()
        if reason is not None:
            print(f"skipping the browser test: {reason}")
            pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def model_dir(make_tiny_vlm: Callable[..., Path]) -> Path:
    return make_tiny_vlm("browsermodel", varied_text=True)


@pytest.fixture(scope="module")
def served(model_dir: Path, tiny_world: Path) -> Iterator[tuple[str, ChatSession]]:
    session = ChatSession.load(model_dir, "cpu")
    cfg = ServeConfig(model=str(model_dir), examples=str(tiny_world / "images"), max_tokens=64,
                      default_max_tokens=MAX_TOKENS)
    with BackgroundServer(create_app(session, cfg)) as running:
        yield running.url, session


def letters_and_digits(text: str) -> str:
    """What survives the chatbot's markdown rendering of random tokens unchanged."""
    return re.sub(r"[^0-9A-Za-z]", "", text)


def wait_for_reply(page: Page, index: int, expected: str, timeout_s: float = 60) -> str:
    """The `index`-th bot message once it shows `expected` (compared on letters and digits)."""
    deadline, shown = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        messages = page.locator(BOT_MESSAGES)
        if messages.count() > index:
            shown = messages.nth(index).inner_text()
            if letters_and_digits(shown) == letters_and_digits(expected):
                return shown
        time.sleep(0.1)
    raise AssertionError(f"bot message {index} shows {shown!r}, expected {expected!r}")


def test_demo_streams_the_reply_in_growing_pieces(served: tuple[str, ChatSession], tiny_world: Path) -> None:
    session = served[1]
    image = load_image(sorted((tiny_world / "images").rglob("*.jpg"))[1])
    handlers = DemoHandlers(session, GenerationPool(1, 0), ServeConfig(max_tokens=64).api_limits())
    updates = list(handlers.respond("  What colour is the star? ", image, [], 0.0, 1.0, 16))
    expected = session.complete([{"role": "user", "content": f"{IMAGE_TOKEN}\nWhat colour is the star?"}], [image],
                                GenerationSettings(16)).text
    shown = [chat[-1]["content"] for chat, _, _ in updates]
    assert len(updates) > 2 and shown[-1] == expected
    assert all(later.startswith(earlier) for earlier, later in zip(shown, shown[1:], strict=False))
    assert updates[-1][1] == [{"role": "user", "content": f"{IMAGE_TOKEN}\nWhat colour is the star?"},
                              {"role": "assistant", "content": expected}]
    assert updates[-1][0][0] == {"role": "user", "content": "What colour is the star?"}  # the marker is not shown
    assert [u[1] for u in handlers.regenerate(image, updates[-1][1], 0.0, 1.0, 16)][-1] == updates[-1][1]


def test_upload_ask_stream_and_clear_in_chromium(chromium: Path, served: tuple[str, ChatSession], tiny_world: Path,
                                                 tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url, session = served
    image_file, other_image = sorted((tiny_world / "images").rglob("*.jpg"))[1:3]
    first = [{"role": "user", "content": f"{IMAGE_TOKEN}\nWhat colour is the star?"}]
    image = load_image(image_file)
    answer = session.complete(first, [image], GenerationSettings(MAX_TOKENS)).text
    second = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And the square?"}]
    follow_up = session.complete(second, [image], GenerationSettings(MAX_TOKENS)).text
    other_answer = session.complete(first, [load_image(other_image)], GenerationSettings(MAX_TOKENS)).text
    assert letters_and_digits(answer) and letters_and_digits(follow_up) and letters_and_digits(other_answer)
    assert letters_and_digits(other_answer) != letters_and_digits(answer)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url, wait_until="domcontentloaded")
            question = page.locator("#question textarea")
            question.wait_for(timeout=60_000)
            page.locator("#image input[type=file]").set_input_files(str(image_file))
            page.locator("#image img").first.wait_for(timeout=30_000)
            question.fill("What colour is the star?")
            page.locator("#send").click()
            wait_for_reply(page, 0, answer)
            question.fill("And the square?")
            question.press("Enter")
            wait_for_reply(page, 1, follow_up)
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            if not DOCS_SCREENSHOT.exists():  # written once, for the README
                DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copy(tmp_path / "serve.png", DOCS_SCREENSHOT)
            page.locator("#image input[type=file]").set_input_files(str(other_image))  # a new conversation
            page.locator(BOT_MESSAGES).first.wait_for(state="detached", timeout=30_000)
            question.fill("What colour is the star?")
            question.press("Enter")
            wait_for_reply(page, 0, other_answer)
            page.locator("#clear").click()
            page.locator(BOT_MESSAGES).first.wait_for(state="detached", timeout=30_000)
        finally:
            browser.close()
    assert (tmp_path / "serve.png").read_bytes().startswith(b"\x89PNG")
