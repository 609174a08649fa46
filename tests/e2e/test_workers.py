"""Issue 10: any number of ``groqbatch run`` workers on one job and one ledger, nothing sent
twice — counted from the server's own journal, on SQLite and on PostgreSQL.

Each test starts ``groqbatch serve`` in its own process and the workers as real CLI
subprocesses pointed at one ledger with ``--ledger``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import ServeProcess, run_cli
from tests.e2e.workers import (
    batch_lines,
    journal,
    ledger_figures,
    start_worker,
    wait_all,
    write_job,
)

WORKERS = 4


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    serve = ServeProcess("--time-scale", "600", "--throughput", "200",
                         log=tmp_path / "serve.log")
    serve.wait_ready()
    yield serve
    serve.stop()


@pytest.fixture
def slow_chat_server(tmp_path: Path) -> Iterator[ServeProcess]:
    serve = ServeProcess("--chat-latency", "0.1", log=tmp_path / "serve.log")
    serve.wait_ready()
    yield serve
    serve.stop()


def start_many(config: Path, ledger_url: str, tmp_path: Path, n: int, *args: str,
               prefix: str = "w") -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    logs = [tmp_path / f"{prefix}{i}.log" for i in range(n)]
    procs = [start_worker(config, ledger_url, log, *args, worker_id=f"{prefix}{i}")
             for i, log in enumerate(logs)]
    return procs, logs


def test_four_workers_on_one_batch_job_create_one_batch_per_shard(
    tmp_path: Path, server: ServeProcess, ledger_url: str
) -> None:
    rows, shard_lines = 240, 20
    config = write_job(tmp_path / "job", "fourb", server.url, rows=rows, shard_lines=shard_lines)
    procs, logs = start_many(config, ledger_url, tmp_path, WORKERS)
    summaries = wait_all(procs, logs)

    shards = rows // shard_lines
    seen = journal(server.url)
    assert seen.batches_created == shards
    per_shard, per_request = batch_lines(server.url)
    assert len(per_shard) == shards
    assert set(per_shard.values()) == {1}
    assert len(per_request) == rows
    assert set(per_request.values()) == {1}
    assert seen.uploads == shards
    figures = ledger_figures(ledger_url, "fourb")
    assert figures["requests"]["succeeded"] == rows
    assert {s["step"] for s in figures["shards"]} == {"reconciled"}
    assert all(s["finished"] for s in summaries)
    # Each shard reconciled by exactly one worker. (Whether the work spread is timing: one
    # worker may finish these seconds-long batches before the others start; bench/workers.py
    # measures the speed-up.)
    assert sum(s["reconciled"]["shards"] for s in summaries) == shards


def test_four_workers_on_one_sync_job_make_one_call_per_request(
    tmp_path: Path, slow_chat_server: ServeProcess, ledger_url: str
) -> None:
    rows = 200
    config = write_job(tmp_path / "job", "fours", slow_chat_server.url, rows=rows, mode="sync")
    procs, logs = start_many(config, ledger_url, tmp_path, WORKERS)
    summaries = wait_all(procs, logs)

    seen = journal(slow_chat_server.url)
    assert seen.chat_calls == rows
    assert set(seen.chat_digests().values()) == {1}
    figures = ledger_figures(ledger_url, "fours")
    assert figures["requests"]["succeeded"] == rows
    assert figures["totals"]["attempts"] == seen.chat_calls
    assert sum(s["fallback"]["sent"] for s in summaries) == rows
    assert sum(1 for s in summaries if s["fallback"]["sent"]) >= 2


def test_two_jobs_sharing_requests_send_each_once_and_finish_only_when_settled(
    tmp_path: Path, server: ServeProcess, ledger_url: str
) -> None:
    shared = [f"shared question {i}" for i in range(120)]
    a = write_job(tmp_path / "a", "joba", server.url, rows=0,
                  texts=shared + [f"only a {i}" for i in range(40)])
    b = write_job(tmp_path / "b", "jobb", server.url, rows=0,
                  texts=[f"only b {i}" for i in range(40)] + shared)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_worker(a, ledger_url, logs[0], worker_id="a"),
             start_worker(b, ledger_url, logs[1], worker_id="b")]
    summary_a, summary_b = wait_all(procs, logs)

    _, per_request = batch_lines(server.url)
    assert len(per_request) == 200
    assert set(per_request.values()) == {1}
    for summary, name in ((summary_a, "joba"), (summary_b, "jobb")):
        assert summary["finished"] is True
        assert summary["requests"]["succeeded"] == 160, summary["requests"]
        assert ledger_figures(ledger_url, name)["requests"]["succeeded"] == 160


@pytest.mark.parametrize("point", ["after_upload", "after_create"])
def test_a_worker_killed_mid_submit_is_finished_by_the_others(
    tmp_path: Path, server: ServeProcess, ledger_url: str, point: str
) -> None:
    rows, shard_lines = 160, 20
    config = write_job(tmp_path / "job", "killsub", server.url, rows=rows, shard_lines=shard_lines)
    victim_log = tmp_path / "victim.log"
    victim = start_worker(config, ledger_url, victim_log, worker_id="victim",
                          env={"GROQBATCH_CRASH_AT": f"{point}:2"})
    assert victim.wait(timeout=60) == -signal.SIGKILL, victim_log.read_text()
    procs, logs = start_many(config, ledger_url, tmp_path, 3, "--lease", "3")
    wait_all(procs, logs)

    shards = rows // shard_lines
    per_shard, per_request = batch_lines(server.url)
    assert len(per_shard) == shards
    assert set(per_shard.values()) == {1}
    assert len(per_request) == rows
    assert set(per_request.values()) == {1}
    assert ledger_figures(ledger_url, "killsub")["requests"]["succeeded"] == rows


def test_a_worker_killed_mid_flex_is_finished_by_the_others(
    tmp_path: Path, slow_chat_server: ServeProcess, ledger_url: str
) -> None:
    rows = 120
    config = write_job(tmp_path / "job", "killflex", slow_chat_server.url, rows=rows, mode="sync")
    victim_log = tmp_path / "victim.log"
    victim = start_worker(config, ledger_url, victim_log, worker_id="victim")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = ledger_figures(ledger_url, "killflex")["requests"]
        if counts["succeeded"] >= 8 and counts["in_flight"] >= 2:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    procs, logs = start_many(config, ledger_url, tmp_path, 3, "--lease", "3")
    summaries = wait_all(procs, logs)

    figures = ledger_figures(ledger_url, "killflex")
    assert figures["requests"]["succeeded"] == rows
    seen = journal(slow_chat_server.url)
    recovered = sum(s["fallback"]["recovered_in_flight"] for s in summaries)
    assert recovered >= 1
    # Only calls cut short by the kill may have been made twice; the ledger counts every
    # answered call once, and a cut-short call is given back.
    assert rows <= seen.chat_calls <= rows + recovered
    assert figures["totals"]["attempts"] == rows


def test_overlapping_no_wait_invocations_like_cron(
    tmp_path: Path, server: ServeProcess, ledger_url: str
) -> None:
    rows, shard_lines = 200, 20
    config = write_job(tmp_path / "job", "cron", server.url, rows=rows, shard_lines=shard_lines)
    finished = False
    deadline = time.monotonic() + 90
    round_ = 0
    while not finished and time.monotonic() < deadline:
        procs, logs = start_many(config, ledger_url, tmp_path, 3, "--no-wait",
                                 prefix=f"c{round_}-")
        summaries = wait_all(procs, logs)
        finished = any(s["finished"] for s in summaries)
        round_ += 1
    assert finished
    per_shard, per_request = batch_lines(server.url)
    assert len(per_shard) == rows // shard_lines
    assert set(per_shard.values()) == {1}
    assert len(per_request) == rows
    assert set(per_request.values()) == {1}
    status = run_cli("status", "--json", str(config), "--ledger", ledger_url)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["requests"]["succeeded"] == rows
    assert not any(w["live"] for w in report["workers"])
    assert len(report["workers"]) >= 3
