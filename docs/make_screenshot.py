"""Screenshot of the `mllm serve` demo page (docs/serve_screenshot.png): a trained model, one image, questions.

Serves the model on loopback, drives Debian's headless chromium with Playwright through an upload and each
question (waiting for every streamed reply to finish), and saves the page. The replies are the model's own.

    python docs/make_screenshot.py --model runs/demo/ov2/instruct/model --image scene.png \
        --question "What colour is the arrow?" --question "What colour is the star?" --examples runs/demo/world/images
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from mllm.serve.chat import ChatSession
from mllm.serve.server import BackgroundServer, ServeConfig, create_app

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
BOT_MESSAGES = "#chatbot .bot-row .message-content"


def wait_for_settled_reply(page: object, index: int, timeout_s: float = 120) -> str:
    """The `index`-th reply once it has stopped changing for a second."""
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        messages = page.locator(BOT_MESSAGES)
        text = messages.nth(index).inner_text() if messages.count() > index else None
        if text != last:
            last, since = text, time.monotonic()
        elif text and time.monotonic() - since > 1.0:
            return text
        time.sleep(0.1)
    raise TimeoutError(f"reply {index} did not settle; last seen {last!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--question", action="append", required=True)
    parser.add_argument("--examples", type=Path)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "serve_screenshot.png")
    args = parser.parse_args()
    session = ChatSession.load(args.model, "cpu")
    cfg = ServeConfig(model=str(args.model), examples=str(args.examples) if args.examples else None)
    with BackgroundServer(create_app(session, cfg)) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(server.url, wait_until="domcontentloaded")
        question = page.locator("#question textarea")
        question.wait_for(timeout=60_000)
        page.locator("#image input[type=file]").set_input_files(str(args.image))
        page.locator("#image img").first.wait_for(timeout=30_000)
        for index, text in enumerate(args.question):
            question.fill(text)
            page.locator("#send").click()
            print(f"{text} -> {wait_for_settled_reply(page, index)}")
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
