"""Logging set-up shared by every command: one format, messages from rank 0 only."""

from __future__ import annotations

import logging
import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger; other ranks only report warnings and errors."""
    logging.basicConfig(
        level=level if is_main_process() else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("httpx", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def summary(line: str) -> None:
    """Print the one-line summary a command ends with (rank 0 only)."""
    if is_main_process():
        print(line, flush=True)
