"""``kill -9`` in the middle of the flex fallback, then run again: every request is answered
once, the calls the killed run had in flight are recovered and sent again, and
``groqbatch status --json`` shows the fallback's figures from the last run's summary.

The real CLI in subprocesses: ``groqbatch serve`` with slow chat (0.2 s a call) and batches
that expire before running a line, so everything goes through flex, and ``groqbatch run``
killed with SIGKILL once some flex answers are in the ledger and more are in flight."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from jobs import load_job
from state.engine import decompress
from tests.e2e.cli import ServeProcess, clean_env, groqbatch_command, run_cli

ROWS = 60


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"batch": {"expire_after_fraction": 0.0}}))
    server = ServeProcess("--time-scale", "3600", "--chat-latency", "0.2", "--scenario", str(scenario))
    server.wait_ready()
    yield server
    server.stop()


def write_job(folder: Path, base_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "rows.jsonl").open("w") as out:
        for i in range(ROWS):
            out.write(json.dumps({"id": i, "text": f"row {i} asks for a short answer"}) + "\n")
    config = folder / "job.toml"
    config.write_text(
        f'name = "flexkill"\nbackend = "local"\nbase_url = "{base_url}"\n'
        'model = "llama-3.1-8b-instant"\n'
        '[input]\npath = "rows.jsonl"\nid_column = "id"\n'
        '[prompt]\nuser = "{{ text }}"\nmax_completion_tokens = 16\n'
        "[policy]\nmax_lines_per_shard = 10\npoll_interval_min_s = 0.02\npoll_interval_max_s = 0.2\n"
        "[policy.fallback]\nconcurrency = 4\n"
    )
    return config


def counts(ledger: Path) -> dict[str, int]:
    """Request status → count, plus ``flex_answers`` (flex results of succeeded requests)."""
    if not ledger.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1) as db:
            found = dict(db.execute("SELECT status, count(*) FROM requests GROUP BY status"))
            found["flex_answers"] = db.execute(
                "SELECT count(*) FROM results s JOIN requests r ON r.custom_id = s.custom_id "
                "WHERE s.source = 'flex' AND r.status = 'succeeded'").fetchone()[0]
            return found
    except sqlite3.OperationalError:  # not created yet, or busy
        return {}


def test_a_kill_during_the_fallback_then_a_rerun_answers_every_request_once(
    serve: ServeProcess, tmp_path: Path
) -> None:
    config = write_job(tmp_path / "job", serve.url)
    ledger = Path(load_job(config).ledger_target)
    log = (tmp_path / "killed-run.log").open("wb")
    proc = subprocess.Popen([*groqbatch_command(), "run", "--quiet", str(config)],
                            stdout=log, stderr=log, env=clean_env(), cwd=config.parent)
    seen: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            seen = counts(ledger)
            if seen.get("flex_answers", 0) >= 4 and seen.get("in_flight", 0) >= 4:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"never caught mid-fallback: {seen}, exit {proc.poll()}")
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    at_kill = counts(ledger)
    assert at_kill.get("in_flight", 0) >= 1
    assert at_kill["flex_answers"] < ROWS

    rerun = run_cli("run", "--json", str(config), cwd=config.parent, timeout_s=40)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["finished"]
    assert summary["requests"]["succeeded"] == ROWS
    flex = summary["fallback"]
    assert flex["recovered_in_flight"] == at_kill["in_flight"]
    assert flex["succeeded"] == ROWS - at_kill["flex_answers"]

    with sqlite3.connect(ledger) as db:
        requests = db.execute("SELECT custom_id, status, prompt_tokens, completion_tokens, tier "
                              "FROM requests").fetchall()
        results = db.execute("SELECT custom_id, status_code, source, body FROM results").fetchall()
    assert len(requests) == ROWS
    assert {r[1] for r in requests} == {"succeeded"}
    assert {r[4] for r in requests} == {"flex"}
    by_id = {r[0]: r for r in results}
    assert len(results) == len(by_id) == ROWS  # one result each
    for custom_id, _, prompt, completion, _ in requests:
        _, status_code, source, body = by_id[custom_id]
        assert (status_code, source) == (200, "flex")
        usage = orjson.loads(decompress(body))["usage"]
        # Paid once in the ledger, even for a call answered just as the first run died.
        assert (prompt, completion) == (usage["prompt_tokens"], usage["completion_tokens"])

    status = run_cli("status", "--json", str(config), cwd=config.parent, timeout_s=20)
    assert status.returncode == 0, status.stderr
    runs = json.loads(status.stdout)["runs"]
    assert runs[0]["summary"]["fallback"] == flex  # the last run's tier and counts
    assert runs[0]["summary"]["fallback"]["tier"] == "flex"
    assert runs[1]["summary"] is None
    assert runs[1]["finished"] is None


def test_kills_mid_call_are_not_failed_attempts(tmp_path: Path) -> None:
    """Issue 16, case 3: ``mode = "sync"``, a server answering after 2 s, the run killed after
    0.8 s three times — more kills than ``max_attempts``. No call ever got an answer or an
    error, so none counts: the last run answers all five, and nothing ends ``failed``."""
    server = ServeProcess("--chat-latency", "2")
    server.wait_ready()
    try:
        folder = tmp_path / "sync"
        folder.mkdir()
        (folder / "rows.jsonl").write_text(
            "".join(json.dumps({"id": i, "text": f"slow row {i}"}) + "\n" for i in range(5)))
        config = folder / "job.toml"
        config.write_text(
            f'name = "slowsync"\nbackend = "local"\nbase_url = "{server.url}"\n'
            'model = "llama-3.1-8b-instant"\n'
            '[input]\npath = "rows.jsonl"\nid_column = "id"\n'
            '[prompt]\nuser = "{{ text }}"\nmax_completion_tokens = 8\n'
            '[policy]\nmode = "sync"\n'
            "[policy.fallback]\nconcurrency = 5\nmax_attempts = 2\n"
        )
        ledger = Path(load_job(config).ledger_target)
        for _ in range(3):
            proc = subprocess.Popen([*groqbatch_command(), "run", "--quiet", str(config)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=clean_env(), cwd=folder)
            deadline = time.monotonic() + 20
            while counts(ledger).get("in_flight", 0) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
            assert counts(ledger).get("in_flight") == 5  # killed mid-call, every time
        final = run_cli("run", "--json", str(config), cwd=folder, timeout_s=40)
        assert final.returncode == 0, final.stderr
        summary = json.loads(final.stdout)
        assert summary["requests"]["succeeded"] == 5
        assert summary["requests"]["failed"] == 0
        assert summary["fallback"]["recovered_in_flight"] == 5
        assert summary["fallback"]["gave_up"] == 0
        assert any("taken back" in note for note in summary["notes"])
        with sqlite3.connect(ledger) as db:
            attempts = [row[0] for row in db.execute("SELECT attempts FROM requests")]
        assert attempts == [1] * 5  # only the call that was answered counts
    finally:
        server.stop()
