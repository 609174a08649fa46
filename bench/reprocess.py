"""Reprocessing: compile a job, pretend every request was answered, change 1% of the input,
compile again — and count what would be sent.

    .venv/bin/python bench/reprocess.py                      # 1,000,000 rows, 1% changed
    .venv/bin/python bench/reprocess.py --rows 100000 --changed-pct 5

Prints, for each compile, the rows, the requests to send, the new / changed / unchanged row
counts and the time taken. No network: answers are marked in the ledger directly (the second
compile only asks the ledger which requests are answered). The outcome is checked: the first
compile must send every row, the second exactly the changed ones; otherwise it exits 1 with
the reason instead of figures.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import JobSpec, compile_job
from state import Ledger


def write_rows(path: Path, rows: int, changed_every: int | None) -> None:
    with path.open("wb") as out:
        for i in range(rows):
            text = f"review {i}: the product was {'fine' if i % 3 else 'poor'} and arrived on time"
            if changed_every and i % changed_every == 0:
                text += " (edited)"
            out.write(orjson.dumps({"id": f"r{i:08d}", "stars": 1 + i % 5, "text": text}) + b"\n")


def spec_for(folder: Path) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "reprocess-bench",
            "model": "llama-3.1-8b-instant",
            "input": {"path": "rows.jsonl", "id_column": "id"},
            "prompt": {"user": "Stars {{ stars }}: {{ text }}", "max_completion_tokens": 4},
        },
        context={"base_dir": folder},
    )


def compile_once(spec: JobSpec, label: str) -> int:
    started = time.perf_counter()
    with Ledger.open(spec.ledger_target) as ledger:
        report = compile_job(spec, ledger)
    elapsed = time.perf_counter() - started
    print(f"{label}: rows={report.rows:,} to_send={report.to_send:,} new={report.new_rows:,} "
          f"changed={report.changed_rows:,} unchanged={report.unchanged_rows:,} "
          f"shards={len(report.shards)} elapsed_s={elapsed:.1f}", flush=True)
    return report.to_send


def mark_all_answered(ledger_path: str) -> None:
    # The bench stands in for the batches: every queued request is taken as answered.
    with sqlite3.connect(ledger_path) as db:
        db.execute("UPDATE requests SET status = 'succeeded' WHERE status = 'queued'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed-pct", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="groqbatch-reprocess-") as scratch:
        folder = Path(scratch)
        spec = spec_for(folder)
        write_rows(folder / "rows.jsonl", args.rows, None)
        first = compile_once(spec, "first compile ")
        if first != args.rows:
            sys.exit(f"work not done, no figures: the first compile queued {first:,} of {args.rows:,}")
        mark_all_answered(spec.ledger_target)
        every = max(1, round(100 / args.changed_pct)) if args.changed_pct > 0 else None
        write_rows(folder / "rows.jsonl", args.rows, every)
        changed = len(range(0, args.rows, every)) if every else 0
        second = compile_once(spec, "after changes ")
        if second != changed:
            sys.exit(f"work not done: {second:,} requests to send after changing {changed:,} rows")
        print(f"sent again: {second:,} of {args.rows:,} rows ({second / args.rows:.2%}), "
              f"exactly the changed ones")


if __name__ == "__main__":
    main()
