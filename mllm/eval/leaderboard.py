"""`mllm leaderboard`: our `results.json` runs beside the OpenVision 2 paper's rows, as Markdown, CSV and a chart.

The reference rows (`reference_results.json`, with their source) are the paper's LLaVA-1.5 and
Open-LLaVA-NeXT tables. Every column names its scale. MME is where scales differ: papers print perception and
cognition sums (out of 2000 and 800, over all 14 categories), while a run on a subset of the categories (the
synthetic world's mini-benchmarks) has sums over fewer categories that are not comparable. So MME gets three
columns: the two sums, filled only for runs covering every category of that half, and the total as a percent
of its maximum, which every row has (for reference rows it is computed from their sums).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mllm.eval.scorers_choice import MME_COGNITION, MME_PERCEPTION
from mllm.logging_utils import summary

REFERENCE_FILE = Path(__file__).with_name("reference_results.json")
MME_MAX = {"mme_perception": 200.0 * len(MME_PERCEPTION), "mme_cognition": 200.0 * len(MME_COGNITION)}


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    scale: str  # shown in the header, so that no two scales share a column


COLUMNS: tuple[Column, ...] = (
    Column("textvqa", "TextVQA", "acc %"),
    Column("chartqa", "ChartQA", "relaxed acc %"),
    Column("ocrbench", "OCRBench", "score /1000"),
    Column("mme_perception", "MME-P", "sum /2000"),
    Column("mme_cognition", "MME-C", "sum /800"),
    Column("mme_percent", "MME", "% of max"),
    Column("seed", "SEED-IMG", "acc %"),
    Column("sqa_img", "SQA-IMG", "acc %"),
    Column("gqa", "GQA", "acc %"),
    Column("pope", "POPE", "F1 %"),
)
# The eight benchmarks of the chart, one panel each; MME as a percent, the one scale every row has.
CHART_KEYS: tuple[str, ...] = ("textvqa", "chartqa", "ocrbench", "mme_percent", "seed", "sqa_img", "gqa", "pope")
# Our benchmark key -> the metric that fills its column (POPE's headline: the "llava" mean F1 or pooled F1).
_RUN_METRIC = {"textvqa": "accuracy", "chartqa": "relaxed_overall", "ocrbench": "score", "seed": "seed_image",
               "sqa_img": "accuracy", "gqa": "accuracy"}


@dataclass
class LeaderboardConfig:
    """Options of `mllm leaderboard`."""

    results: list[str] = field(default_factory=list, metadata={
        "positional": True, "help": "results.json files of `mllm eval run` / `mllm eval score`"})
    reference: str = "openvision2"  # the reference table to show beside the runs ("none": runs only)
    names: str = ""  # comma-separated labels, one per results file ("": each file's folder name)
    out: str = "runs/leaderboard"


@dataclass
class Row:
    label: str
    source: str  # "ours (protocol)" or the reference framework
    values: dict[str, float | None]


def load_reference(name: str) -> tuple[str, list[Row]]:
    """The reference table `name`: its source line and one row per encoder setting."""
    tables = json.loads(REFERENCE_FILE.read_text())
    if name not in tables:
        raise ValueError(f"unknown reference {name!r}; expected one of {', '.join(tables)} or 'none'")
    rows = []
    for entry in tables[name]["rows"]:
        values: dict[str, float | None] = {c.key: entry.get(c.key) for c in COLUMNS}
        total = entry["mme_perception"] + entry["mme_cognition"]
        values["mme_percent"] = round(100.0 * total / (MME_MAX["mme_perception"] + MME_MAX["mme_cognition"]), 2)
        label = f"{entry['encoder']} {entry['backbone']} @{entry['resolution']}px"
        rows.append(Row(label, entry["framework"], values))
    return tables[name]["source"], rows


def _mme_values(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """MME's three columns from a run's metrics: a half's sum only when the run has all its categories."""
    present = {key.split("/", 1)[1] for key in metrics if key.startswith("acc/")}
    return {
        "mme_perception": metrics["perception"] if present >= set(MME_PERCEPTION) else None,
        "mme_cognition": metrics["cognition"] if present >= set(MME_COGNITION) else None,
        "mme_percent": 100.0 * metrics["total"] / metrics["max_total"],
    }


def run_row(path: Path, label: str) -> Row:
    """One row from a results.json of ours; a benchmark it lacks stays empty."""
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        benchmarks = json.loads(path.read_text())["benchmarks"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a results.json of `mllm eval run` or `mllm eval score`: {err}") from err
    values: dict[str, float | None] = {c.key: None for c in COLUMNS}
    protocols = sorted({entry.get("protocol", "?") for entry in benchmarks.values()})
    for name, entry in benchmarks.items():
        metrics = entry["metrics"]
        if name == "mme":
            values.update(_mme_values(metrics))
        elif name == "pope":
            values["pope"] = metrics.get("f1_mean", metrics["f1"])
        elif name in _RUN_METRIC:
            values[name] = metrics[_RUN_METRIC[name]]
    return Row(label, f"ours ({'/'.join(protocols)})", values)


def _labels(paths: Sequence[Path], spec: str) -> list[str]:
    names = [name.strip() for name in spec.split(",")] if spec else []
    if names and len(names) != len(paths):
        raise ValueError(f"--names gives {len(names)} labels for {len(paths)} results files")
    labels = list(names) or [p.resolve().parent.name for p in paths]
    # Two runs in same-named folders stay apart.
    return [f"{label} ({i + 1})" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def _cell(value: float | None, key: str) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}" if key in ("ocrbench", "mme_perception", "mme_cognition") else f"{value:.1f}"


def markdown(rows: Sequence[Row], source: str | None) -> str:
    header = ["model", "setting"] + [f"{c.title} ({c.scale})" for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for row in rows:
        cells = [row.label, row.source] + [_cell(row.values[c.key], c.key) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "MME-P and MME-C are the papers' perception / cognition sums; a run shows them only when it covers "
             "all 10 perception or all 4 cognition categories. MME (% of max) is (P + C) over the maximum of the "
             "categories scored, for reference rows (P + C) / 2800. — : not measured."]
    if source:
        notes.append(f"Reference rows: {source}")
    return "\n".join(lines + notes) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["model", "setting"] + [f"{c.key} [{c.scale}]" for c in COLUMNS])
        for row in rows:
            writer.writerow([row.label, row.source] + ["" if row.values[c.key] is None else row.values[c.key]
                                                       for c in COLUMNS])


def draw_chart(rows: Sequence[Row], path: Path) -> None:
    """One horizontal bar panel per benchmark, each on its own scale; our runs in a colour of their own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = {c.key: c for c in COLUMNS}
    settings = list(dict.fromkeys(row.source for row in rows))
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    colour = {s: palette[i % len(palette)] for i, s in enumerate(settings)}
    height = max(3.0, 0.28 * len(rows) + 1.6)
    figure, axes = plt.subplots(1, len(CHART_KEYS), figsize=(2.6 * len(CHART_KEYS) + 3.5, height), sharey=True)
    positions = list(range(len(rows)))[::-1]  # first row on top
    for axis, key in zip(axes, CHART_KEYS, strict=True):
        values = [row.values[key] for row in rows]
        axis.barh(positions, [v or 0.0 for v in values], color=[colour[row.source] for row in rows], height=0.75)
        top = 1000.0 if key == "ocrbench" else 100.0
        for y, value in zip(positions, values, strict=True):
            text = "n/a" if value is None else _cell(value, key)
            axis.text((value or 0.0) + top * 0.01, y, text, va="center", fontsize=7)
        axis.set_xlim(0, top * 1.15)
        axis.set_title(f"{columns[key].title}\n({columns[key].scale})", fontsize=10)
        axis.grid(axis="x", alpha=0.3)
        axis.tick_params(axis="x", labelsize=8)
    axes[0].set_yticks(positions, [row.label for row in rows], fontsize=8)
    axes[0].set_ylim(-0.6, len(rows) - 0.4)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[s]) for s in settings]
    figure.legend(handles, settings, loc="upper center", ncol=len(settings), frameon=False, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def build_leaderboard(cfg: LeaderboardConfig) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.csv and leaderboard.png to `cfg.out`; returns their paths."""
    if not cfg.results:
        raise ValueError("mllm leaderboard needs at least one results.json")
    paths = [Path(p) for p in cfg.results]
    rows = [run_row(path, label) for path, label in zip(paths, _labels(paths, cfg.names), strict=True)]
    source = None
    if cfg.reference != "none":
        source, reference = load_reference(cfg.reference)
        rows += reference
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "leaderboard.md", "csv": out / "leaderboard.csv", "chart": out / "leaderboard.png"}
    files["markdown"].write_text(markdown(rows, source))
    write_csv(rows, files["csv"])
    draw_chart(rows, files["chart"])
    return files


def run_leaderboard(cfg: LeaderboardConfig) -> None:
    files = build_leaderboard(cfg)
    print(files["markdown"].read_text(), end="")
    summary(f"leaderboard: {len(cfg.results)} run(s) -> {files['markdown']}, {files['csv']}, {files['chart']}")
