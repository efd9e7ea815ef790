"""`mllm chat`: one-shot answers equal the evaluator's, multi-turn prompts extend the training tokenization,
the REPL's commands, and errors that name the image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from mllm.cli import main
from mllm.data.conversation import ConversationError, encode_chat, encode_dialogue_prompt, expand_images
from mllm.eval.runner import Answerer
from mllm.llm import IMAGE_TOKEN
from mllm.serve.chat import ChatConfig, ChatSession, load_image, repl


@pytest.fixture(scope="module")
def model_dir(make_tiny_vlm: Callable[..., Path]) -> Path:
    return make_tiny_vlm("chatmodel")


@pytest.fixture(scope="module")
def image_file(tiny_world: Path) -> Path:
    return next((tiny_world / "images").rglob("*.jpg"))


def test_one_shot_answer_equals_the_evaluators_greedy_answer(model_dir: Path, image_file: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    main(["chat", "--model", str(model_dir), "--image", str(image_file), "--prompt", "What colour is the star?",
          "--max_new_tokens", "12", "--device", "cpu"])
    printed = capsys.readouterr().out.strip()
    answerer = Answerer(model_dir, torch.device("cpu"))
    assert printed == answerer.answer([load_image(image_file)], ["What colour is the star?"], 12)[0]


def test_second_turn_prompt_extends_the_training_tokenization(model_dir: Path) -> None:
    session = ChatSession.load(model_dir, "cpu")
    tokenizer, n = session.tokenizer, session.model.num_image_tokens
    first = [{"role": "user", "content": f"{IMAGE_TOKEN}\nHow many shapes?"}, {"role": "assistant", "content": "3"}]
    ids = encode_dialogue_prompt(tokenizer, [*first, {"role": "user", "content": "Which is red?"}], n)
    trained = encode_chat(tokenizer, first)[0]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ids[: len(trained) + n - 1] == expand_images(trained, trained, image_id, n)[0]
    assert tokenizer.decode(ids[len(trained) + n - 1 :]).startswith("<|im_start|>user\nWhich is red?")
    with pytest.raises(ConversationError, match="must end with a user turn"):
        encode_dialogue_prompt(tokenizer, first, n)


def test_session_keeps_the_conversation_and_the_image_goes_with_the_first_turn(model_dir: Path,
                                                                                image_file: Path) -> None:
    session = ChatSession.load(model_dir, "cpu")
    session.set_image(load_image(image_file))
    reply = session.ask("Describe the image.", max_new_tokens=5)
    session.ask("And the colours?", max_new_tokens=5)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[0]["content"].startswith(IMAGE_TOKEN) and session.messages[1]["content"] == reply
    assert IMAGE_TOKEN not in session.messages[2]["content"]
    torch.manual_seed(0)
    sampled = session.ask("Again?", max_new_tokens=5, temperature=1.0, top_p=0.9)
    assert isinstance(sampled, str)
    with pytest.raises(ValueError, match="may not contain <image>"):
        session.ask("<image> twice")


def test_repl_commands(model_dir: Path, image_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = ChatSession.load(model_dir, "cpu")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    written: list[str] = []
    lines = [f"/image {tmp_path / 'missing.png'}", f"/image {broken}", f"/image {image_file}", "", "hello",
             "/reset", "/zoom", "/quit", "never read"]
    repl(session, ChatConfig(max_new_tokens=4), lines, written.append)
    text = "".join(written)
    assert f"error: image not found: {tmp_path / 'missing.png'}" in text
    assert f"error: unreadable image {broken}" in text
    assert "(new conversation about that image)" in text and "(conversation cleared)" in text
    assert "unknown command '/zoom'" in text
    assert session.messages == [] and session.image is not None
    assert capsys.readouterr().out  # the reply to "hello" was streamed to the terminal


def test_missing_image_is_a_clear_cli_error(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="image not found: .*nope.png"):
        main(["chat", "--model", str(model_dir), "--image", str(tmp_path / "nope.png"), "--prompt", "hi"])


def test_images_are_read_as_rgb(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 128).save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").mode == "RGB"
