"""A model with no price (issue 11, case 7): the cost is unknown, never $0, and a dollar budget
that could never trip is refused before anything is spent. And ``plan`` on a job never run
counts every row as new (case 6)."""

from __future__ import annotations

import json
from pathlib import Path

from jobs import load_job
from tests.e2e.cli import run_cli
from tests.integration.lifecycle import write_job

ROWS = 6


def unpriced_table(tmp_path: Path) -> str:
    table = tmp_path / "prices.toml"
    table.write_text('[models."llama-3.3-70b-versatile"]\ninput = 0.59\noutput = 0.79\n')
    return str(table)


def test_plan_counts_a_never_run_jobs_rows_as_new(tmp_path: Path) -> None:
    config = write_job(tmp_path, rows=ROWS)
    result = run_cli("plan", "--json", str(config))
    assert result.returncode == 0, result.stderr
    compiled = json.loads(result.stdout)["compile"]
    assert (compiled["new_rows"], compiled["changed_rows"], compiled["unchanged_rows"]) == (ROWS, 0, 0)


def test_an_unpriced_model_costs_unknown_in_plan_run_and_status(tmp_path: Path) -> None:
    config = write_job(tmp_path, rows=ROWS)
    prices = unpriced_table(tmp_path)
    plan = run_cli("plan", "--json", str(config), GROQBATCH_PRICES=prices)
    assert plan.returncode == 0, plan.stderr
    report = json.loads(plan.stdout)
    assert report["price_known"] is False
    assert any("cost unknown" in w and "llama-3.1-8b-instant" in w and prices in w
               for w in report["warnings"])

    run = run_cli("run", "--json", str(config), GROQBATCH_PRICES=prices)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["cost_known"] is False
    assert any("cost unknown" in note for note in summary["notes"])
    text = run_cli("status", str(config), GROQBATCH_PRICES=prices)
    assert text.returncode == 0, text.stderr
    assert "cost unknown" in text.stdout
    assert "$0.000000" not in text.stdout.split("runs (newest first)")[0]


def test_a_dollar_budget_on_an_unpriced_model_is_refused_before_spending(tmp_path: Path) -> None:
    config = write_job(tmp_path, rows=ROWS, policy={})
    config.write_text(config.read_text() + "[policy.budget]\nmax_dollars = 1.0\n")
    prices = unpriced_table(tmp_path)
    for command in ("validate", "run"):
        result = run_cli(command, str(config), GROQBATCH_PRICES=prices)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        first = result.stderr.splitlines()[0]
        assert "policy.budget.max_dollars" in first
        assert "llama-3.1-8b-instant" in first
    workdir = load_job(config).workdir_path
    assert not workdir.exists() or not any(workdir.glob("shards/*.jsonl"))
