"""Gather the results of a demo sweep (one `mllm demo` folder per variant) into one JSON file."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import torch


def variant(folder: Path) -> dict:
    results = json.loads((folder / "results.json").read_text())
    row: dict = {name: {bench: (round(v["headline"], 1), round(v["chance"], 1)) if isinstance(v, dict)
                        else round(v, 1) for bench, v in scores.items()} for name, scores in results.items()}
    row["pretrain_final_loss"] = json.loads((folder / "pretrain" / "summary.json").read_text())["final_loss"]
    row["timings"] = json.loads((folder / "timings.json").read_text())
    for name in results:
        stages = json.loads((folder / name / "summary.json").read_text())["stages"]
        row[f"{name}_stage_losses"] = [(s["stage"], round(s["first_loss"], 3), round(s["final_loss"], 3))
                                       for s in stages]
    return row


def main() -> None:
    out, result = Path(sys.argv[1]), Path(sys.argv[2])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    rows = {d.name: variant(d) if (d / "results.json").exists() else "unfinished"
            for d in sorted(p for p in out.iterdir() if p.is_dir())}
    summary = {"date": dt.date.today().isoformat(), "device": device,
               "scores": "(headline, chance) per benchmark", "variants": rows}
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
