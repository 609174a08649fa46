"""``bench/workers.py`` at its tiny size: it measures and prints its table, and when the work
is not done it says why and exits 1 instead of printing a ratio.

The bench runs as a script in a subprocess, on SQLite files, as a person would run it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.cli import clean_env

BENCH = Path(__file__).resolve().parents[2] / "bench" / "workers.py"


def run_bench(*args: str, timeout_s: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), "--size", "tiny", "--sqlite", *args],
                          capture_output=True, text=True, timeout=timeout_s, env=clean_env(),
                          check=False)


def test_the_workers_bench_prints_its_table_when_the_work_is_done() -> None:
    result = run_bench("--workers", "1", "2")

    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("1. I/O-bound: sync job, 40 requests"), result.stdout
    assert any(line.startswith("2. batch job: 100 requests in 5 shards") for line in lines)
    # workers, wall s, speed-up, in-worker s, sent, batches, duplicates, per worker, all wall s
    rows = [line.split() for line in lines if line.split()[:1] in (["1"], ["2"])]
    assert [(row[0], row[4], row[5], row[6]) for row in rows] == [
        ("1", "40", "0", "0"), ("2", "40", "0", "0"),       # sync: chat calls, no batches
        ("1", "100", "5", "0"), ("2", "100", "5", "0"),     # batch: batch lines, batches
    ]
    assert all(row[2].endswith("x") for row in rows)
    assert lines[-1].startswith("targets: 0 duplicates: met"), result.stdout


def test_the_workers_bench_fails_without_a_ratio_when_nothing_succeeds() -> None:
    # The server knows no such model: the workers refuse it before sending anything (exit 2),
    # so no request succeeds and the bench prints no figures.
    result = run_bench("--only", "sync", "--workers", "1", "--model", "no-such-model")

    assert result.returncode == 1, result.stdout
    assert "speed-up" not in result.stdout
    assert "work not done, no figures" in result.stderr
    assert "exited 2" in result.stderr
    assert "model: unknown model 'no-such-model'" in result.stderr


RECONCILE = BENCH.parent / "reconcile.py"


def test_the_reconcile_bench_answers_every_line_before_printing_a_ratio() -> None:
    """Issue 12: its set-up once wrote nothing (requests in no shard) while it printed a ratio;
    now every line must be answered first."""
    result = subprocess.run([sys.executable, str(RECONCILE), "--lines", "3000"],
                            capture_output=True, text=True, timeout=50, env=clean_env(), check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ledger: 3,000 succeeded, 0 quarantined, 0 duplicates" in result.stdout
    assert "% of raw" in result.stdout


BENCH_DIR = BENCH.parent


def run_script(name: str, *args: str, timeout_s: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH_DIR / name), *args], capture_output=True,
                          text=True, timeout=timeout_s, env=clean_env(), check=False)


def test_the_compile_bench_checks_every_row_became_a_queued_line() -> None:
    result = run_script("compile.py", "--rows", "2000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "compile_job" in result.stdout
    assert "% of raw" in result.stdout
    assert "2,000 requests, 1 shards" in result.stdout


def test_the_ledger_write_bench_checks_every_request_and_result() -> None:
    result = run_script("ledger_write.py", "2000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "requests: 2,000 (new: 2,000; results moved: 2,000)" in result.stdout


def test_the_reprocess_bench_checks_only_the_changed_rows_are_sent() -> None:
    result = run_script("reprocess.py", "--rows", "2000", "--changed-pct", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sent again: 100 of 2,000 rows (5.00%), exactly the changed ones" in result.stdout


def test_the_e2e_bench_checks_both_tools_answered_every_row_once() -> None:
    result = run_script("e2e.py", "--rows", "300", "--rounds", "1", "--time-scale", "20",
                        "--poll-s", "0.1", timeout_s=55)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any("bare" in line and "all 300 answered once" in line for line in lines), result.stdout
    assert any("groqbatch" in line and "all 300 answered once" in line for line in lines)
    assert lines[-1].startswith("groqbatch / bare: wall "), result.stdout
FLEX = BENCH.parent / "flex.py"


def run_flex_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FLEX), "--size", "tiny", *args], capture_output=True,
                          text=True, timeout=55, env=clean_env(), check=False)


def test_the_flex_bench_finds_the_limits_and_answers_every_request_once() -> None:
    """Issue 15: the requests headers are the day's, so the requests-per-minute limit is found
    from 429s; every part checks its ledger before it prints a figure."""
    result = run_flex_bench("--skip", "throughput")

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "2. requests per minute: a flex limit of 240/min (4/s) found from 429s" in out
    assert "ledger: 24/24 succeeded once via flex → 0 lost" in out
    assert "3. tokens per minute: a flex limit of 60,000 tokens/min" in out
    assert "ledger 10/10 succeeded once" in out
    share = float(out.split("→ share ")[1].split("%")[0])
    assert 50 <= share <= 105, out  # a figure, not a target: the machine is shared
    assert out.splitlines()[-1].startswith("targets: nothing lost: met; ≥ 90% of the allowed rpm: ")


def test_the_flex_bench_fails_without_a_figure_when_requests_are_not_answered() -> None:
    result = run_flex_bench("--skip", "limits", "--model", "no-such-model")

    assert result.returncode == 1, result.stdout
    assert "req/s" not in result.stdout
    # The model is refused before any call is made (issue 14: fail loud before spending).
    assert "work not done, no figures — the run was refused" in result.stderr
    assert "unknown model 'no-such-model'" in result.stderr
