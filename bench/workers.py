"""Workers: one job run by 1, 2 and 4 ``groqbatch run`` processes sharing one ledger.

    .venv/bin/python bench/workers.py                        # PostgreSQL, 600 sync + 2,000 batch
    .venv/bin/python bench/workers.py --sqlite --size tiny   # SQLite files, a few seconds
    .venv/bin/python bench/workers.py --workers 1 2 4 8 --repeat 3 --ledger-url postgresql+psycopg://…

Two jobs, each run once per worker count (``--repeat`` runs the counts in turns, 1 2 4 1 2 4
…, so every count sees the same noise, and keeps each count's best), every measurement with a
fresh ledger (a new database on the PostgreSQL server, or a new SQLite file with ``--sqlite``)
and a fresh ``groqbatch serve`` in its own process, whose request journal
(``GET /_emulator/requests``) is the independent count of what was sent:

1. **I/O-bound**: a ``mode = "sync"`` job of ``--requests`` requests, all through the fallback
   (``[policy.fallback] concurrency = 4``), against a server that takes ``--chat-latency``
   seconds per chat completion. The concurrency is *per worker*: 4 workers keep 16 calls in
   flight where one keeps 4. That is the point of scaling out a job that waits on the network,
   and what the ≥ 1.8x (2 workers) and ≥ 3x (4 workers) targets of DESIGN.md measure.
2. **Batch**: ``--rows`` requests in ``--shards`` shards, on a server whose clock runs
   ``--time-scale`` times faster, so each batch settles in milliseconds and the run is
   uploads, creates, polls and reconciles shared between the workers.

The wall time is from starting the first worker to the last one's exit (process start-up
included); the speed-up is against the fewest workers. Beside it: the longest ``run_job`` of
the workers (their summaries' ``elapsed_s``, start-up excluded) and each worker's share (calls
sent, shards reconciled), which show where the time went. Before printing anything each measurement is checked: every worker exited 0 and
said the job finished, every request ``succeeded`` in the ledger with one attempt, and the
server saw every request (sync: one chat call per request; batch: one batch per shard, every
custom_id in a batch). Work not done is an error naming what is missing, exit status 1 — never
a ratio. Duplicates, from the journal, are chat calls beyond one per request body, batches
beyond one per shard and batch lines beyond one per custom_id; any duplicate is also exit 1.
The speed-up targets are printed as met or not (the machine is shared), not enforced.

PostgreSQL comes from ``--ledger-url``, else ``GROQBATCH_TEST_LEDGER_URL``, else a throwaway
cluster started with ``.ci/postgres`` (stopped at the end).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.cli import ServeProcess
from tests.e2e.workers import batch_lines, journal, ledger_figures, start_worker, write_job
from tests.ledgers import fresh_postgres_database

ROOT = Path(__file__).resolve().parents[1]

SIZES = {
    #        sync requests, chat latency s, batch rows, shards
    "default": (600, 0.2, 2000, 20),
    "tiny": (40, 0.05, 100, 5),
}
MODEL = "llama-3.1-8b-instant"
TARGETS = {2: 1.8, 4: 3.0}
"""Workers → the least speed-up DESIGN.md asks of the I/O-bound job."""


class NotDone(Exception):
    """A measurement whose work was not done (or not checkable): the bench reports no figure."""


@dataclass(frozen=True, slots=True)
class Part:
    """One of the two jobs, as measured."""

    name: str
    mode: str
    requests: int
    shard_lines: int
    serve_args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Measurement:
    workers: int
    wall_s: float
    in_worker_s: float
    """The longest ``run_job`` of the workers (their summaries' ``elapsed_s``): the wall time
    less process start-up and exit."""
    shares: tuple[int, ...]
    """What each worker did: sync, chat calls it sent; batch, shards it reconciled."""
    sent: int
    """Sync: chat calls the server answered. Batch: batch lines across the server's batches."""
    batches: int
    duplicates: int


# ------------------------------------------------------------------ ledgers


@contextmanager
def postgres_server(url: str | None) -> Iterator[str]:
    """A PostgreSQL server URL: ``url``, else the tests', else a throwaway cluster."""
    url = url or os.environ.get("GROQBATCH_TEST_LEDGER_URL")
    if url:
        yield url
        return
    started = subprocess.run([str(ROOT / ".ci" / "postgres")], capture_output=True, text=True,
                             timeout=120, check=False)
    exports = dict(line.removeprefix("export ").split("=", 1)
                   for line in started.stdout.splitlines() if line.startswith("export "))
    if started.returncode != 0 or "GROQBATCH_TEST_LEDGER_URL" not in exports:
        raise NotDone(f"could not start PostgreSQL with .ci/postgres (use --sqlite or --ledger-url): "
                      f"{started.stderr.strip()[-500:]}")
    try:
        yield exports["GROQBATCH_TEST_LEDGER_URL"]
    finally:
        subprocess.run([str(ROOT / ".ci" / "postgres"), "stop", exports["GROQBATCH_TEST_PG_DIR"]],
                       timeout=60, check=False)


@contextmanager
def fresh_postgres(server_url: str) -> Iterator[str]:
    """A new, empty database on ``server_url``'s server, dropped afterwards."""
    with fresh_postgres_database(server_url) as url:
        yield url


@contextmanager
def fresh_ledger(pg_server: str | None, folder: Path) -> Iterator[str]:
    if pg_server is None:
        yield str(folder / "ledger.sqlite")
    else:
        with fresh_postgres(pg_server) as url:
            yield url


# ------------------------------------------------------------------ one measurement


def run_workers(config: Path, ledger_url: str, folder: Path, workers: int,
                timeout_s: float) -> tuple[float, list[dict[str, Any]]]:
    """Start ``workers`` workers on the job, wait for all; (wall seconds, their summaries)."""
    logs = [folder / f"worker{i}.log" for i in range(workers)]
    started = time.perf_counter()
    procs = [start_worker(config, ledger_url, log, worker_id=f"w{i}") for i, log in enumerate(logs)]
    deadline = started + timeout_s
    try:
        codes = [proc.wait(timeout=max(deadline - time.perf_counter(), 0.1)) for proc in procs]
    except subprocess.TimeoutExpired:
        raise NotDone(f"{workers} workers still running after {timeout_s:.0f}s (logs in {folder})") \
            from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall_s = time.perf_counter() - started
    summaries = []
    for code, log in zip(codes, logs, strict=True):
        text = log.read_text(errors="replace")
        if code != 0:
            raise NotDone(f"{log.stem} exited {code}:\n{_tail(text)}")
        # --json prints one indented object last; anything before it is log output.
        start = 0 if text.startswith("{") else text.rfind("\n{\n") + 1
        try:
            summaries.append(orjson.loads(text[start:]))
        except orjson.JSONDecodeError:
            raise NotDone(f"{log.stem} printed no JSON summary:\n{_tail(text)}") from None
    return wall_s, summaries


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def check_ledger(ledger_url: str, job: str, part: Part, summaries: list[dict[str, Any]]) -> list[str]:
    """What the workers and the ledger say is not done."""
    problems = []
    unfinished = [s.get("worker") for s in summaries if not s.get("finished")]
    if unfinished:
        problems.append(f"workers {unfinished} ended without the job finished")
    figures = ledger_figures(ledger_url, job)
    counts = {k: v for k, v in figures["requests"].items() if v}
    if counts.get("succeeded", 0) != part.requests or len(counts) != 1:
        problems.append(f"ledger: {counts} for {part.requests} requests (all must have succeeded)")
    attempts = int(figures["totals"]["attempts"])
    if attempts != part.requests:
        problems.append(f"ledger: {attempts} attempts for {part.requests} requests")
    steps = Counter(s["step"] for s in figures["shards"])
    if part.mode == "batch":
        expected = math.ceil(part.requests / part.shard_lines)
        if steps != Counter({"reconciled": expected}):
            problems.append(f"ledger: shards {dict(steps)}, expected {expected} reconciled")
    return problems


def check_server(base_url: str, part: Part) -> tuple[int, int, int, list[str]]:
    """From the server's journal and batches: (sent, batches, duplicates, problems)."""
    seen = journal(base_url)
    problems = []
    chats = Counter(e["digest"] for e in seen.entries
                    if e["method"] == "POST" and e["path"].endswith("/chat/completions"))
    failed_chats = sum(1 for e in seen.entries if e["method"] == "POST"
                       and e["path"].endswith("/chat/completions") and e["status"] != 200)
    duplicates = sum(n - 1 for n in chats.values())
    if failed_chats:
        problems.append(f"server: {failed_chats} chat calls not answered 200")
    if part.mode == "sync":
        if len(chats) != part.requests:
            problems.append(f"server: {len(chats)} distinct chat requests for {part.requests} requests")
        return seen.chat_calls, 0, duplicates, problems
    per_shard, per_request = batch_lines(base_url)
    duplicates += sum(n - 1 for n in per_shard.values()) + sum(n - 1 for n in per_request.values())
    shards = math.ceil(part.requests / part.shard_lines)
    if len(per_shard) != shards:
        problems.append(f"server: batches for {len(per_shard)} shards, expected {shards}")
    if len(per_request) + len(chats) < part.requests:
        problems.append(f"server: {len(per_request)} requests in batches and {len(chats)} by chat "
                        f"for {part.requests} requests")
    if seen.uploads != seen.batches_created:
        problems.append(f"server: {seen.uploads} uploads for {seen.batches_created} batches")
    return sum(per_request.values()), seen.batches_created, duplicates, problems


def measure(part: Part, workers: int, *, model: str, pg_server: str | None, root: Path,
            turn: int, timeout_s: float) -> Measurement:
    folder = root / f"{part.name}-w{workers}-t{turn}"
    folder.mkdir(parents=True)
    job = f"bench-{part.name}"
    server = ServeProcess(*part.serve_args, log=folder / "serve.log")
    try:
        server.wait_ready()
        config = write_job(folder / "job", job, server.url, rows=part.requests,
                           shard_lines=part.shard_lines, mode=part.mode)
        if model != MODEL:
            config.write_text(config.read_text().replace(f'model = "{MODEL}"', f'model = "{model}"'))
        with fresh_ledger(pg_server, folder) as ledger_url:
            wall_s, summaries = run_workers(config, ledger_url, folder, workers, timeout_s)
            problems = check_ledger(ledger_url, job, part, summaries)
        try:
            sent, batches, duplicates, server_problems = check_server(server.url, part)
        except httpx.HTTPError as exc:
            raise NotDone(f"could not read what the server saw ({exc})") from exc
    finally:
        server.stop()
    problems += server_problems
    if problems:
        raise NotDone(f"{part.name} job, {workers} workers: " + "; ".join(problems)
                      + f" (logs in {folder})")
    key = ("fallback", "sent") if part.mode == "sync" else ("reconciled", "shards")
    shares = tuple(int(s[key[0]].get(key[1]) or 0) for s in summaries)
    in_worker_s = max(float(s["elapsed_s"]) for s in summaries)
    return Measurement(workers, wall_s, in_worker_s, shares, sent, batches, duplicates)


# ------------------------------------------------------------------ the table


def print_table(title: str, part: Part, runs: dict[int, list[Measurement]]) -> None:
    print(title)
    sent, share = ("chat calls", "calls") if part.mode == "sync" else ("batch lines", "shards")
    print(f"  {'workers':>7}  {'wall s':>7}  {'speed-up':>8}  {'in-worker s':>11}  {sent:>11}  "
          f"{'batches':>7}  {'duplicates':>10}  {share + ' per worker':<18}  all wall s")
    base = min(m.wall_s for m in runs[min(runs)])
    for workers, measured in sorted(runs.items()):
        best = min(measured, key=lambda m: m.wall_s)
        every = " ".join(f"{m.wall_s:.2f}" for m in measured)
        shares = "/".join(map(str, best.shares))
        print(f"  {workers:>7}  {best.wall_s:>7.2f}  {base / best.wall_s:>7.2f}x  "
              f"{best.in_worker_s:>11.2f}  {best.sent:>11,}  {best.batches:>7}  "
              f"{sum(m.duplicates for m in measured):>10}  {shares:<18}  {every}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="default: 600 sync requests at 0.2 s, 2,000 batch rows in 20 shards; "
                             "tiny: 40 at 0.05 s, 100 in 5")
    parser.add_argument("--requests", type=int, help="requests of the sync (I/O-bound) job")
    parser.add_argument("--chat-latency", type=float, help="real seconds per chat completion")
    parser.add_argument("--rows", type=int, help="requests of the batch job")
    parser.add_argument("--shards", type=int, help="shards of the batch job")
    parser.add_argument("--time-scale", type=float, default=600,
                        help="the batch server's emulated seconds per real second")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=1, help="turns over the worker counts")
    parser.add_argument("--only", choices=["sync", "batch"], help="run one of the two jobs")
    parser.add_argument("--model", default=MODEL, help="the jobs' model (an unknown one does no work)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a measurement may take")
    ledgers = parser.add_mutually_exclusive_group()
    ledgers.add_argument("--ledger-url", help="a PostgreSQL server (each measurement makes a database)")
    ledgers.add_argument("--sqlite", action="store_true", help="SQLite files instead of PostgreSQL")
    parser.add_argument("--keep", action="store_true", help="keep the folders (printed)")
    args = parser.parse_args()

    requests, latency, rows, shards = SIZES[args.size]
    requests = args.requests or requests
    latency = args.chat_latency if args.chat_latency is not None else latency
    rows = args.rows or rows
    shards = args.shards or shards
    parts = [
        Part("sync", "sync", requests, 100, ("--chat-latency", str(latency))),
        Part("batch", "batch", rows, math.ceil(rows / shards),
             ("--time-scale", str(args.time_scale), "--throughput", "200")),
    ]
    parts = [p for p in parts if args.only in (None, p.name)]
    counts = sorted(set(args.workers))
    runs: dict[str, dict[int, list[Measurement]]] = {p.name: {n: [] for n in counts} for p in parts}
    root = Path(tempfile.mkdtemp(prefix="groqbatch-bench-workers-"))
    kind = "SQLite files" if args.sqlite else "PostgreSQL"
    try:
        with (postgres_server(args.ledger_url) if not args.sqlite else _none()) as pg_server:
            for turn in range(args.repeat):
                for part in parts:
                    for workers in counts:
                        m = measure(part, workers, model=args.model, pg_server=pg_server, root=root,
                                    turn=turn, timeout_s=args.timeout)
                        runs[part.name][workers].append(m)
                        print(f"  turn {turn + 1}: {part.name} job, {workers} workers: {m.wall_s:.2f}s, "
                              f"{m.duplicates} duplicates", file=sys.stderr, flush=True)
    except NotDone as exc:
        print(f"bench/workers.py: work not done, no figures: {exc}", file=sys.stderr)
        return 1  # the folders stay, for their logs
    finally:
        if args.keep:
            print(f"folders kept in {root}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)

    best = f"best of {args.repeat}" if args.repeat > 1 else "one run each"
    for part in parts:
        if part.mode == "sync":
            title = (f"1. I/O-bound: sync job, {part.requests:,} requests, chat latency {latency:g}s, "
                     f"fallback concurrency 4 per worker; {kind} ledger ({best})")
        else:
            title = (f"2. batch job: {part.requests:,} requests in {math.ceil(part.requests / part.shard_lines)}"
                     f" shards, time scale {args.time_scale:g}; {kind} ledger ({best})")
        print_table(title, part, runs[part.name])
    duplicates = sum(m.duplicates for by_count in runs.values() for ms in by_count.values() for m in ms)
    verdicts = [f"0 duplicates: {'met' if not duplicates else f'NOT MET ({duplicates})'}"]
    if "sync" in runs and 1 in runs["sync"]:
        base = min(m.wall_s for m in runs["sync"][1])
        for workers, target in TARGETS.items():
            if workers in runs["sync"]:
                ratio = base / min(m.wall_s for m in runs["sync"][workers])
                verdicts.append(f"I/O-bound ≥ {target:g}x at {workers}: "
                                f"{'met' if ratio >= target else 'not met'} ({ratio:.2f}x)")
    print("targets: " + "; ".join(verdicts))
    return 1 if duplicates else 0


@contextmanager
def _none() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    sys.exit(main())
