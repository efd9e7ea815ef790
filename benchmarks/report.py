"""What every benchmark result carries (date, machine) and how it is written: printed, and saved when asked."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

import torch


def stamp() -> dict[str, str]:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return {"date": dt.date.today().isoformat(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
                       f"{device}"}


def report(result: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(result, indent=1) + "\n"
    print(text, end="")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
