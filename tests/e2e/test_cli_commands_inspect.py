"""``groqbatch inspect`` and ``groqbatch jobs`` after the quickstart runs, as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.cli import run_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart and the init job, run once into one shared ledger."""
    root = tmp_path_factory.mktemp("inspect")
    shutil.copytree(CONFIGS, root / "configs", ignore=shutil.ignore_patterns(".groqbatch"))
    config = root / "configs" / "quickstart.toml"
    never = run_cli("inspect", str(config), "T0001")
    assert never.returncode == 2
    assert never.stderr.splitlines()[0].startswith("error: ledger: job 'quickstart' has no ledger")
    shared = str(root / "shared.sqlite")
    ran = run_cli("run", "--quiet", "--ledger", shared, str(config))
    assert ran.returncode == 0, ran.stderr
    assert run_cli("init", str(root / "demo")).returncode == 0
    ran = run_cli("run", "--quiet", "--ledger", shared, str(root / "demo" / "job.toml"))
    assert ran.returncode == 0, ran.stderr
    return config


def test_inspect_a_row_by_key_and_by_custom_id(quickstart: Path) -> None:
    shared = str(quickstart.parents[1] / "shared.sqlite")
    result = run_cli("inspect", "--json", "--ledger", shared, str(quickstart), "T0001")
    assert result.returncode == 0, result.stderr
    journey = json.loads(result.stdout)
    assert sorted(journey) == sorted([
        "job", "key", "matched_by", "row_key", "rows", "input_row", "input_note", "custom_id",
        "status", "request", "shard", "batch", "attempts", "result", "error", "cost", "shards"])
    assert (journey["job"], journey["matched_by"], journey["row_key"], journey["status"]) == (
        "quickstart", "row_key", "T0001", "succeeded")
    assert journey["input_row"]["ticket_id"] == "T0001"
    assert journey["request"]["body"]["model"] == "llama-3.1-8b-instant"
    assert "T0001" in journey["request"]["body"]["messages"][-1]["content"]
    assert journey["batch"]["id"].startswith("batch_")
    assert journey["batch"]["status"] == "completed"
    assert journey["shard"]["key"] == journey["request"]["shard_key"]
    assert [(a["source"], a["outcome"], a["status_code"], a["batch_id"])
            for a in journey["attempts"]] == [("batch", "answer", 200, journey["batch"]["id"])]
    assert journey["result"]["body"]["choices"][0]["message"]["content"]
    assert journey["error"] is None
    assert journey["cost"]["prompt_tokens"] > 0

    by_id = run_cli("inspect", "--json", "--ledger", shared, str(quickstart), journey["custom_id"])
    assert by_id.returncode == 0, by_id.stderr
    assert json.loads(by_id.stdout)["matched_by"] == "custom_id"
    assert json.loads(by_id.stdout)["row_key"] == "T0001"

    human = run_cli("inspect", "--ledger", shared, str(quickstart), "T0001")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0] == "job 'quickstart' · row T0001 (input row 0)"
    assert lines[2].startswith(f"request {journey['custom_id']} · succeeded · tier batch · 1 attempts")
    assert f"  1. batch {journey['batch']['id']}: answer 200 at " in human.stdout
    assert "error: -" in lines


def test_inspect_an_unknown_key_exits_2_naming_it(quickstart: Path) -> None:
    shared = str(quickstart.parents[1] / "shared.sqlite")
    result = run_cli("inspect", "--ledger", shared, str(quickstart), "NOPE")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == (
        f"error: job 'quickstart' has no row key or custom_id 'NOPE' in its ledger ({shared}) "
        "(a row key is the row's id_column value; `groqbatch export` lists them as "
        "groqbatch_row_key)")


def test_jobs_lists_every_job_of_a_ledger(quickstart: Path) -> None:
    shared = str(quickstart.parents[1] / "shared.sqlite")
    result = run_cli("jobs", "--json", "--ledger", shared)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["ledger"] == shared
    jobs = {job["name"]: job for job in listing["jobs"]}
    assert sorted(jobs) == ["demo", "quickstart"]
    quick = jobs["quickstart"]
    assert sorted(quick) == sorted([
        "name", "state", "requests", "rows", "spend", "open_shards", "runs", "last_started_at",
        "last_finished_at", "live_workers", "created_at", "updated_at"])
    assert (quick["state"], quick["requests"]["succeeded"], quick["runs"]) == ("finished", 20, 1)
    assert quick["spend"]["cost_usd"] > 0
    assert jobs["demo"]["requests"]["succeeded"] == 5

    table = run_cli("jobs", cwd=quickstart.parent, GROQBATCH_LEDGER=shared, COLUMNS="80")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["job", "state", "done", "failed", "open", "cost", "runs", "last",
                                "run", "(UTC)"]
    assert [line.split()[:3] for line in lines[1:]] == [["demo", "finished", "5/5"],
                                                        ["quickstart", "finished", "20/20"]]
    assert max(map(len, lines)) <= 80

    by_config = run_cli("jobs", "--json", "--config", str(quickstart))  # its own ledger: none yet
    assert by_config.returncode == 2
    assert "no ledger at" in by_config.stderr.splitlines()[0]


def test_jobs_needs_a_ledger_that_exists(tmp_path: Path) -> None:
    none = run_cli("jobs")
    assert none.returncode == 2
    assert none.stderr.splitlines()[0].startswith("error: which ledger? give --ledger URL")
    missing = run_cli("jobs", "--ledger", str(tmp_path / "missing.sqlite"))
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == (
        f"error: --ledger: no ledger at {tmp_path / 'missing.sqlite'} "
        "(give a job's ledger file or a SQLAlchemy URL)")
    assert not (tmp_path / "missing.sqlite").exists()
