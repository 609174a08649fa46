"""A scheduled evaluation end to end, as cron would drive it: ``groqbatch run --no-wait
--run-name nightly-N`` invoked until each night's run is finished (and scored), three nights,
the third after the prompt changed; then ``groqbatch report`` shows three rows of metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.e2e.cli import run_cli

COUNTRIES = ["France", "Japan", "Kenya", "Peru", "Canada"]
PROMPT_V1 = "What is the capital of {{ country }}?"
PROMPT_V2 = "Name the capital of {{ country }}, hint {{ reference }}."


def write_config(directory: Path, prompt: str) -> Path:
    with (directory / "questions.jsonl").open("w") as out:
        for i, country in enumerate(COUNTRIES):
            out.write(json.dumps({"qid": f"q{i}", "country": country, "reference": f"City{i}"})
                      + "\n")
    config = directory / "eval.toml"
    config.write_text(f"""\
name = "nightly-eval"
backend = "local"
model = "llama-3.1-8b-instant"

[input]
path = "questions.jsonl"
id_column = "qid"

[prompt]
user = "{prompt}"
max_completion_tokens = 48

[policy]
cache = false
max_lines_per_shard = 2
poll_interval_min_s = 0.05
poll_interval_max_s = 0.2

[local]
time_scale = 3600

[evaluate]
reference = "reference"

[[evaluate.scorers]]
kind = "exact"

[[evaluate.scorers]]
kind = "regex"
name = "mentions"
ignore_case = true
""")
    return config


def cron_night(config: Path, name: str) -> list[dict[str, Any]]:
    """Invoke ``run --no-wait`` as cron would, until the night's run reports its scores."""
    summaries = []
    for _ in range(60):
        result = run_cli("run", str(config), "--no-wait", "--quiet", "--json", "--run-name", name)
        assert result.returncode == 0, result.stderr
        summaries.append(json.loads(result.stdout))
        if summaries[-1]["evaluation"] is not None:
            return summaries
        time.sleep(0.2)
    raise AssertionError(f"{name} never finished: {summaries[-1]}")


def test_three_scheduled_runs_then_the_report(tmp_path: Path) -> None:
    config = write_config(tmp_path, PROMPT_V1)
    nights = [cron_night(config, "nightly-1"), cron_night(config, "nightly-2")]
    write_config(tmp_path, PROMPT_V2)  # the prompt changes before the third night
    nights.append(cron_night(config, "nightly-3"))

    for night in nights:
        assert sum(s["compile"]["to_send"] for s in night) == len(COUNTRIES)  # fresh, once
        assert night[-1]["evaluation"]["answered"] == len(COUNTRIES)

    unnamed = run_cli("run", str(config), "--no-wait", "--quiet")
    assert unnamed.returncode == 2
    assert "--run-name" in unnamed.stderr

    result = run_cli("report", str(config), "--json", "--html", str(tmp_path / "out" / "r.html"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["scorers"] == ["exact", "mentions"]
    runs = report["runs"]
    assert [r["run_name"] for r in runs] == ["nightly-1", "nightly-2", "nightly-3"]
    assert [r["run_id"] for r in runs] == [night[-1]["run_id"] for night in nights]
    assert [r["metrics"]["exact"]["mean"] for r in runs] == [0.0, 0.0, 0.0]
    # the server echoes the question: only the third prompt names the reference
    assert [r["metrics"]["mentions"]["mean"] for r in runs] == [0.0, 0.0, 1.0]
    assert [r["metrics"]["mentions"]["delta"] for r in runs] == [None, 0.0, 1.0]
    assert all(r["metrics"]["mentions"]["n"] == len(COUNTRIES) for r in runs)

    page = (tmp_path / "out" / "r.html").read_text()
    assert page.count("<svg") == 2  # one chart per scorer
    assert "nightly-3" in page
    assert "<script" not in page
    assert "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")

    table = run_cli("report", str(config))
    assert table.returncode == 0, table.stderr
    assert "nightly-2" in table.stdout
    assert "+1.000" in table.stdout
