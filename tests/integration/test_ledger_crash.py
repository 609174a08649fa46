"""The ledger under ``kill -9`` and under two writing processes, on real SQLite files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import state
from state import Ledger, RequestRecord, RequestStatus, ResultRecord, ResultSource, RowRecord

ROOT = Path(state.__file__).resolve().parent.parent
COUNT = 40_000

_RECONCILE = textwrap.dedent(
    """
    import sys
    from state import Ledger, RequestStatus, ResultRecord, ResultSource
    ledger = Ledger.open(sys.argv[1])
    ids = [f"r{i:06d}" for i in range(int(sys.argv[2]))]
    lines = (
        ResultRecord(i, RequestStatus.SUCCEEDED, ResultSource.BATCH, 200, b'{"ok": 1}',
                     prompt_tokens=1)
        for i in ids
    )
    print("started", flush=True)
    ledger.record_results(lines)
    print("done", flush=True)
    """
)

_WRITER = textwrap.dedent(
    """
    import sys
    from state import Ledger, RequestRecord
    ledger = Ledger.open(sys.argv[1])
    prefix, count = sys.argv[2], int(sys.argv[3])
    for start in range(0, count, 500):
        ledger.record_requests(
            RequestRecord(f"{prefix}{i:06d}", "/x", b"{}") for i in range(start, start + 500)
        )
    """
)


def _python(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_some_answers(path: Path) -> None:
    deadline = time.monotonic() + 30
    with Ledger.open(path) as ledger:
        while ledger.request_counts()["succeeded"] == 0:
            assert time.monotonic() < deadline, "reconcile made no progress"
            time.sleep(0.01)


def _submitted_ledger(path: Path) -> list[str]:
    ids = [f"r{i:06d}" for i in range(COUNT)]
    with Ledger.open(path) as ledger:
        ledger.record_job("enrich", "h", "{}")
        ledger.record_requests(RequestRecord(i, "/x", b"{}") for i in ids)
        ledger.record_rows("enrich", (RowRecord(i, n, i, None) for n, i in enumerate(ids)))
        ledger.transition(ids, RequestStatus.PENDING, RequestStatus.QUEUED)
        ledger.transition(ids, RequestStatus.QUEUED, RequestStatus.SUBMITTED)
    return ids


def test_kill_9_during_reconcile_loses_and_doubles_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ids = _submitted_ledger(path)
    process = _python("-c", _RECONCILE, str(path), str(COUNT))
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    _wait_for_some_answers(path)  # some chunks committed; 40,000 take seconds more
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)  # also closes the pipes
    assert process.returncode == -signal.SIGKILL, stderr

    with Ledger.open(path) as ledger:
        answered = ledger.answered_ids(ids)
        # Every answered request has its result, and every result belongs to an answer.
        assert {r.custom_id for r in ledger.results_for(ids)} == answered
        assert 0 < len(answered) < COUNT, "the kill should land mid-reconcile"
        # Reading the whole file again finishes the job and pays for nothing twice.
        lines = (
            ResultRecord(
                i, RequestStatus.SUCCEEDED, ResultSource.BATCH, 200, b"{}", prompt_tokens=1
            )
            for i in ids
        )
        assert ledger.record_results(lines) == COUNT - len(answered)
        assert ledger.request_counts("enrich")["succeeded"] == COUNT
    with Ledger.open(path) as ledger, ledger._db.transaction("check", write=False) as connection:
        total = connection.exec_driver_sql("SELECT sum(prompt_tokens) FROM requests").scalar()
    assert total == COUNT


def test_two_processes_write_at_once_without_locking_errors(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path).close()
    writers = [_python("-c", _WRITER, str(path), prefix, "10000") for prefix in ("a", "b")]
    for writer in writers:
        _, stderr = writer.communicate(timeout=55)
        assert writer.returncode == 0, stderr
    with Ledger.open(path) as ledger:
        assert ledger.request_counts()["pending"] == 20_000
