"""``--refresh`` never deletes an answer before it has a better one (issue 16, case 1).

A job runs to completion; then refreshes fail (a wrong API key) or are killed with SIGKILL at
each crash point. After each, ``export`` and ``status`` still give every row its earlier
answer. A refresh that finishes replaces the answers, and the replaced ones are kept in the
ledger's ``result_history``.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs import load_job
from state import Ledger
from tests.e2e.cli import ServeProcess, clean_env, groqbatch_command, run_cli
from tests.e2e.crash import SERVE_ARGS, write_job

ROWS = 12


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    serve = ServeProcess(*SERVE_ARGS)
    serve.wait_ready()
    yield serve
    serve.stop()


def export_rows(config: Path, tmp_path: Path) -> dict[str, dict[str, Any]]:
    out = tmp_path / "export.jsonl"
    result = run_cli("export", str(config), "-o", str(out), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    return {str(row["id"]): row for row in map(json.loads, out.read_text().splitlines())}


def answers(rows: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
    return {key: (row["groqbatch_status"], row["groqbatch_answer"]) for key, row in rows.items()}


def first_run(tmp_path: Path, server: ServeProcess, name: str) -> tuple[Path, dict[str, Any]]:
    config = write_job(tmp_path / name, name, server.url, rows=ROWS, shard_lines=4)
    result = run_cli("run", "--json", str(config), timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["requests"]["succeeded"] == ROWS
    before = answers(export_rows(config, tmp_path))
    assert {status for status, _ in before.values()} == {"succeeded"}
    assert all(answer for _, answer in before.values())
    return config, before


def test_a_refresh_refused_by_the_server_keeps_every_answer(tmp_path: Path,
                                                            server: ServeProcess) -> None:
    config, before = first_run(tmp_path, server, "refused")
    # The job says backend = "local" with the server's URL; as "groq" it sends GROQ_API_KEY.
    config.write_text(config.read_text().replace('backend = "local"', 'backend = "groq"'))
    refused = run_cli("run", "--refresh", str(config), timeout_s=60, GROQ_API_KEY="gsk_wrong_key_1234")
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    assert "gsk_wrong_key_1234" not in refused.stderr + refused.stdout

    assert answers(export_rows(config, tmp_path)) == before
    status = run_cli("status", "--json", str(config))
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["kept_answers"] == ROWS  # reopened, answers kept until new ones arrive
    assert report["requests"]["succeeded"] == 0


@pytest.mark.parametrize("point", ["after_upload", "after_create", "after_settle", "mid_reconcile"])
def test_a_refresh_killed_at_each_step_keeps_every_answer(tmp_path: Path, server: ServeProcess,
                                                          point: str) -> None:
    config, before = first_run(tmp_path, server, f"kill-{point.replace('_', '-')}")
    env = clean_env(GROQBATCH_CRASH_AT=f"{point}:1")
    killed = subprocess.run([*groqbatch_command(), "run", "--quiet", "--refresh", str(config)],
                            capture_output=True, text=True, timeout=60, env=env, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    assert answers(export_rows(config, tmp_path)) == before

    # A refresh that finishes: every request answered again, each earlier answer in history.
    done = run_cli("run", "--json", "--refresh", str(config), timeout_s=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["finished"] is True
    assert summary["requests"]["succeeded"] == ROWS
    after = answers(export_rows(config, tmp_path))
    assert after == before  # the server's answers are deterministic: the same ones again
    spec = load_job(config)
    with Ledger.open(spec.ledger_target) as ledger:
        ids = [cid for cid in ledger.row_ids(spec.name, [str(i) for i in range(ROWS)]).values()
               if cid is not None]
        assert len(ids) == ROWS
        replaced = sum(len(ledger.result_history(cid)) for cid in ids)
    # Requests the killed refresh had already answered again were refreshed once more by the
    # last run: every request's earlier answer was kept at least once, none deleted.
    assert replaced >= ROWS
