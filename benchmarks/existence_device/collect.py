"""Gather run.sh's logs (one folder per part) into one JSON: benchmark curves of the VLM stages, held-out
accuracy curves of the probes (and of sketch_lm.py), and where each job stopped. Also reads sketch_device/'s.

    python benchmarks/existence_device/collect.py --device "one H200" RESULT.json OUT_LONG [OUT_WARM ...]
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import re
from pathlib import Path

EVAL = re.compile(r"during_training: step (\d+): (.*)$")


def stage_log(path: Path) -> dict:
    """In-training benchmark checks and the closing loss line of an `mllm train` log."""
    curve, losses = [], None
    for line in path.read_text().splitlines():
        if match := EVAL.search(line):
            scores = dict(item.split(" ") for item in match.group(2).split(", "))
            curve.append({"step": int(match.group(1)), **{k.removeprefix("eval_"): float(v) for k, v in scores.items()
                                                          if k != "eval_mean"}})
        elif line.startswith(("train: ", "pretrain: ")):
            losses = line.split(": ", 1)[1].split("; model")[0].split("; encoder")[0]
    return {"checks": curve, "stage_losses": losses or "unfinished"}


def probe_log(path: Path) -> dict:
    rows = [ast.literal_eval(line) for line in path.read_text().splitlines() if line.startswith("{'step'")]
    return {"curve": [{k: r[k] for k in ("step", "loss", "held_out_accuracy", "share_yes")} for r in rows],
            "last_step": rows[-1]["step"] if rows else 0}


def sketch_log(path: Path) -> dict:
    """sketch_lm.py's checks: "step N LOSS (POPE accuracy, {held-out losses}) SECONDS"."""
    curve = []
    for line in path.read_text().splitlines():
        if line.startswith("step ") and not line.startswith("step 0 "):
            step, loss, rest = line.split(" ", 3)[1:]
            accuracy, losses = ast.literal_eval(rest.rsplit(" ", 1)[0])
            curve.append({"step": int(step), "loss": float(loss), "held_out_pope_accuracy": accuracy,
                          **{f"held_out_{k}_{'accuracy' if k == 'reading' else 'loss'}": v
                             for k, v in losses.items()}})
    return {"curve": curve, "last_step": curve[-1]["step"] if curve else 0}


def lm_log(path: Path) -> dict:
    rows = [ast.literal_eval(line) for line in path.read_text().splitlines() if line.startswith("{'loss'")]
    return {"last_epoch": float(rows[-1]["epoch"]), "last_loss": float(rows[-1]["loss"])} if rows else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", required=True, help="where run.sh ran, for the record")
    parser.add_argument("--code", default="", help="the commit run.sh ran at, for the record")
    parser.add_argument("result", type=Path)
    parser.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args()
    jobs: dict[str, dict] = {}
    for folder in args.folders:
        for log in sorted(folder.glob("*.log")):
            name = log.stem
            if name.startswith("probe"):
                jobs[name] = probe_log(log)
            elif name.startswith("sketch_lm"):
                jobs[name] = sketch_log(log)
            elif name.endswith(".lm"):
                jobs[name] = lm_log(log)
            else:
                jobs[name] = stage_log(log)
    summary = {"date": dt.date.today().isoformat(), "device": args.device, "code": args.code, "jobs": jobs,
               "read_me": "checks: in-training scores on the first 160 rows (POPE's is F1: 0 = 'no' to all, 66.7 = "
                          "'yes' to all); probes: held-out accuracy on 400 object lists; jobs stopped at the time "
                          "limit end early"}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
