"""`mllm leaderboard`: the paper's reference rows as shipped, runs beside them with every column on a named
scale (MME sums only where they are comparable), CSV and Markdown that agree, and a chart that is drawn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from mllm.cli import main
from mllm.eval.leaderboard import COLUMNS, LeaderboardConfig, build_leaderboard, load_reference, run_row
from mllm.eval.scorers_choice import MME_COGNITION, MME_PERCEPTION


def _results(path: Path, mme_categories: list[str], protocol: str = "default") -> Path:
    mme = {f"acc/{c}": 50.0 for c in mme_categories}
    perception = 75.0 * sum(c in MME_PERCEPTION for c in mme_categories)
    cognition = 75.0 * sum(c in MME_COGNITION for c in mme_categories)
    mme.update(perception=perception, cognition=cognition, total=perception + cognition,
               max_total=200.0 * len(mme_categories))
    benchmarks = {
        "textvqa": {"metrics": {"accuracy": 41.25}}, "chartqa": {"metrics": {"relaxed_overall": 12.5}},
        "ocrbench": {"metrics": {"score": 333.3, "accuracy": 33.33}}, "mme": {"metrics": mme},
        "seed": {"metrics": {"seed_all": 60.0, "seed_image": 62.0}},
        "pope": {"metrics": {"f1": 80.0, "f1_mean": 81.0} if protocol == "llava" else {"f1": 80.0}},
    }
    for entry in benchmarks.values():
        entry["protocol"] = protocol
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return path


def test_reference_rows_are_the_papers_numbers() -> None:
    source, rows = load_reference("openvision2")
    assert "OpenVision 2" in source and len(rows) == 34
    by_setting = {(r.source, r.label): r.values for r in rows}
    # Hand-copied from the paper's tables: OpenVision 2 L/14 at 224px under both frameworks, SigLIP under NeXT.
    assert by_setting[("LLaVA-1.5", "OpenVision 2 L/14 @224px")] == {
        "textvqa": 59.0, "chartqa": 13.7, "ocrbench": 327, "mme_perception": 1460, "mme_cognition": 312,
        "mme_percent": pytest.approx(100 * 1772 / 2800, abs=0.005), "seed": 69.3, "sqa_img": 76.5, "gqa": 62.6,
        "pope": 87.1}
    assert by_setting[("Open-LLaVA-NeXT", "OpenVision 2 L/14 @224px")]["mme_cognition"] == 297
    assert by_setting[("Open-LLaVA-NeXT", "SigLIP SoViT-400M/14 @384px")]["chartqa"] == 61.3
    assert {r.source for r in rows} == {"LLaVA-1.5", "Open-LLaVA-NeXT"}
    encoders = {r.label.split(" L/14")[0].split(" SoViT")[0].split(" H/14")[0].split(" g/14")[0] for r in rows}
    assert {"OpenVision", "OpenVision 2", "OpenAI-CLIP", "SigLIP"} <= encoders


def test_mme_sums_only_for_runs_covering_every_category(tmp_path: Path) -> None:
    subset = run_row(_results(tmp_path / "a" / "results.json", ["existence", "count", "code_reasoning"]), "a")
    assert subset.values["mme_perception"] is None and subset.values["mme_cognition"] is None
    assert subset.values["mme_percent"] == pytest.approx(100 * 225 / 600)
    full = run_row(_results(tmp_path / "b" / "results.json", [*MME_PERCEPTION, *MME_COGNITION], "llava"), "b")
    assert full.values["mme_perception"] == 750.0 and full.values["mme_cognition"] == 300.0
    assert full.values["pope"] == 81.0 and subset.values["pope"] == 80.0  # llava: mean F1 over splits
    assert full.source == "ours (llava)" and subset.values["gqa"] is None


def test_leaderboard_writes_markdown_csv_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = _results(tmp_path / "run1" / "results.json", ["existence", "count"])
    second = _results(tmp_path / "run2" / "results.json", ["existence", "count"])
    main(["leaderboard", str(first), str(second), "--out", str(tmp_path / "lb")])
    printed = capsys.readouterr().out
    table = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert table in printed
    header = table.splitlines()[0]
    for column in COLUMNS:
        assert f"{column.title} ({column.scale})" in header
    assert "| run1 | ours (default) | 41.2 | 12.5 | 333 | — | — | 37.5 | 62.0 | — | — | 80.0 |" in table
    assert "| OpenVision 2 L/14 @224px | LLaVA-1.5 | 59.0 | 13.7 | 327 | 1460 | 312 | 63.3 |" in table
    with open(tmp_path / "lb" / "leaderboard.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 + 34
    assert rows[0]["model"] == "run1" and rows[0]["mme_perception [sum /2000]"] == ""
    assert float(rows[0]["mme_percent [% of max]"]) == pytest.approx(37.5)
    chart = Image.open(tmp_path / "lb" / "leaderboard.png")
    assert chart.width > 1500 and chart.height > 600


def test_leaderboard_without_reference_and_with_names(tmp_path: Path) -> None:
    results = _results(tmp_path / "eval" / "results.json", ["existence", "count"])
    files = build_leaderboard(LeaderboardConfig(results=[str(results), str(results)], reference="none",
                                                names="ov2, random", out=str(tmp_path / "lb")))
    lines = files["markdown"].read_text().splitlines()
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| ov2", "| random"] and "Reference rows" not in lines[-1]


def test_leaderboard_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=f"results file not found: {tmp_path / 'nope.json'}"):
        main(["leaderboard", str(tmp_path / "nope.json"), "--out", str(tmp_path / "lb")])
    results = _results(tmp_path / "r" / "results.json", ["existence", "count"])
    with pytest.raises(SystemExit, match="unknown reference 'openvision9'"):
        main(["leaderboard", str(results), "--reference", "openvision9", "--out", str(tmp_path / "lb")])
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="is not a results.json"):
        main(["leaderboard", str(tmp_path / "bad.json"), "--out", str(tmp_path / "lb")])
