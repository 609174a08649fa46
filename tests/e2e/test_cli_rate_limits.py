"""``groqbatch run`` against ``groqbatch serve`` whose flex tier has a small daily request
budget: the run stops for today with exit 0, prints when the budget is full again, and leaves
the rest retryable; running again stops again at once, having sent at most a call."""

from __future__ import annotations

import json
from pathlib import Path

from jobs import load_job
from tests.e2e.cli import ServeProcess, run_cli
from tests.integration.flexjobs import write_flex_job
from tests.integration.lifecycle import MODEL, read_ledger

ROWS = 16
DAILY = 10


def test_a_spent_daily_budget_ends_the_run_with_a_note_saying_when_it_resets(tmp_path: Path) -> None:
    serve = ServeProcess("--rate-limit", f"{MODEL}@flex=rpd:{DAILY}")
    try:
        serve.wait_ready()
        config = write_flex_job(tmp_path, rows=ROWS, base_url=serve.url, policy={"mode": "sync"},
                                fallback={"concurrency": 2})
        first = run_cli("run", str(config))
        again = run_cli("run", str(config), "--json")
    finally:
        serve.stop()

    assert first.returncode == 0, first.stderr[-2000:]
    note = next(line for line in first.stdout.splitlines() if "stopped for today" in line)
    assert f"the daily rate limit (requests per day (RPD) {DAILY}) is spent" in note
    assert "requests stay retryable — the limit is full again at 20" in note
    assert note.rstrip().endswith("run again then")

    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads(again.stdout)
    daily = summary["fallback"]["daily_limit"]
    assert daily["limit"] == f"requests per day (RPD) {DAILY}"
    assert summary["fallback"]["sent"] <= 1
    view = read_ledger(load_job(config))
    succeeded = view.with_status("succeeded")
    assert DAILY - 2 <= len(succeeded) <= DAILY
    assert len(view.with_status("retryable")) == ROWS - len(succeeded) == summary["left_retryable"]
    assert all(view.results[cid].status_code == 200 for cid in succeeded)
    # What was claimed but not sent says so; nothing was refused by the server.
    reasons = {r.last_error for r in view.with_status("retryable").values()} - {None}
    assert reasons <= {"flex: not sent: stopped for today (daily rate limit)"}
    assert summary["fallback"]["status_counts"] == {}
