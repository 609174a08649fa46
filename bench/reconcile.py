"""Reconcile throughput: ``pipeline.reconcile.apply_file`` beside raw parse + insert, in one run.

    .venv/bin/python bench/reconcile.py                    # 1,000,000 result lines
    .venv/bin/python bench/reconcile.py --lines 200000
    .venv/bin/python bench/reconcile.py --lines 200000 --profile   # cProfile of ours, top 25

What is measured, on the same files:

* **data**: ``--lines`` answers in Groq's batch output format, made by the local server's own
  code (``Responder.complete`` + ``batch_lines.response_line``: 256 real completions, each line
  with its own ``custom_id`` and ids), in output files of ``--file-lines`` (default 50,000,
  Groq's per-batch limit). As compile makes shards, file k holds the k-th run of the sorted
  custom_ids, in that order (the server answers in input order); ``--shuffle`` scrambles each
  file instead (Groq does not promise an order): the worst case for the B-trees. Not timed.
* **ledger prep** (not timed): a fresh ledger made by ``Ledger.open``; the job's requests put
  straight into its ``requests`` table with raw ``sqlite3.executemany`` as ``submitted``
  (faster than walking them pending → queued → submitted through the ledger, and the state
  reconcile finds after a real submit).
* **raw**: ``orjson.loads`` of every line and ``sqlite3.executemany`` of
  ``(custom_id, status_code, line)`` into a fresh table keyed by ``custom_id``, a commit per
  5,000 lines (the ledger's chunk), same PRAGMAs as the ledger (WAL, synchronous=NORMAL,
  64 MB cache). The floor we compare with (DESIGN.md: reconcile ≥ 50% of raw).
* **ours**: ``apply_file`` on each file, as ``reconcile_shard`` calls it — parse, look the ids
  up, upsert the results (compressed bodies), move each request submitted → succeeded with its
  tokens and cost, in one transaction per chunk.
* **ledger only**: ``Ledger.record_results`` of the same records, already parsed (a second
  fresh ledger), to show how the time splits between parsing and writing.

Raw and ours each run in a fresh child process, so each peak RSS (``ru_maxrss``) is its own;
ours also reports its peak after the first 100,000 lines beside the peak at the end (target:
flat — the end within 1.3x, under 300 MB). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import pstats
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

JOB = "bench"
MODEL = "llama-3.1-8b-instant"
CHUNK = 5_000  # pipeline.reconcile.CHUNK_LINES and the ledger's CHUNK_SIZE
TEMPLATES = 256


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def custom_id(i: int) -> str:
    """A content-hash-like id, as compile makes them (``gb_`` + 26 base32 characters)."""
    import base64

    digest = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()
    return "gb_" + base64.b32encode(digest).decode().rstrip("=").lower()[:26]


# ---------------------------------------------------------------------------------- data


def _templates() -> list[dict[str, Any]]:
    """Real output records from the local server's responder, one per distinct prompt."""
    from pipeline.emulator.batch_lines import response_line
    from pipeline.emulator.models import ModelRegistry
    from pipeline.emulator.responder import Responder

    responder = Responder(ModelRegistry())
    records = []
    for n in range(TEMPLATES):
        body = {"model": MODEL, "max_completion_tokens": 48, "temperature": 0,
                "messages": [{"role": "system", "content": "Answer in one short sentence."},
                             {"role": "user", "content": f"Summarise review {n} of the catalogue."}]}
        completion = responder.complete(body, service_tier="on_demand")
        records.append(response_line("x", 200, completion["x_groq"]["id"], completion))
    return records


def generate(folder: Path, lines: int, file_lines: int, *, shuffle: bool) -> list[Path]:
    """Output files of ``file_lines`` lines (the last one shorter), one per shard.

    Compile writes shards in custom_id order, so shard k holds the k-th run of sorted ids, and
    the server answers a shard's lines in its input order; ``shuffle`` scrambles each file
    (Groq does not promise the order), the worst case for the ledger's B-trees.
    """
    templates = _templates()
    rng = random.Random(7)
    ids = sorted(custom_id(i) for i in range(lines))
    files = []
    for start in range(0, lines, file_lines):
        numbers = list(range(start, min(start + file_lines, lines)))
        if shuffle:
            rng.shuffle(numbers)
        path = folder / f"output-{start // file_lines:04d}.jsonl"
        with path.open("wb", buffering=1 << 20) as out:
            for i in numbers:
                record = templates[i % TEMPLATES]
                record["custom_id"] = ids[i]
                record["id"] = f"batch_req_{i:026d}"
                out.write(orjson.dumps(record) + b"\n")
        files.append(path)
    return files


def prepare_ledger(path: Path, lines: int, file_lines: int) -> None:
    """A ledger whose requests (the job's custom_ids) all await their batch answer, each in
    the shard whose output file holds its line (shard k: the k-th run of sorted ids) — a batch
    line counts only for a request still in that line's shard."""
    from state import Ledger

    with Ledger.open(path) as ledger:
        ledger.record_job(JOB, "h", "{}")
    body = zlib.compress(b'{"model":"llama-3.1-8b-instant","messages":[]}', 1)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    now = time.time()
    sql = ("INSERT INTO requests (custom_id, endpoint, body, status, attempts, tier, prompt_tokens, "
           "completion_tokens, cost_usd, created_at, updated_at, shard_key) "
           "VALUES (?, '/v1/chat/completions', ?, 'submitted', 1, 'batch', 0, 0, 0.0, ?, ?, ?)")
    shards = ("INSERT INTO shards (key, job, path, sha256, lines, bytes, step, created_at, "
              "updated_at) VALUES (?, ?, '', '', ?, 0, 'settled', ?, ?)")
    ids = sorted(custom_id(i) for i in range(lines))  # as compile inserts them: in key order
    db.execute("BEGIN")
    db.executemany(shards, ((shard_of(k), JOB, file_lines, now, now)
                            for k in range(-(-lines // file_lines))))
    db.execute("COMMIT")
    for start in range(0, lines, 50_000):
        db.execute("BEGIN")
        db.executemany(sql, ((cid, body, now, now, shard_of((start + i) // file_lines))
                             for i, cid in enumerate(ids[start : start + 50_000])))
        db.execute("COMMIT")
    db.close()


def shard_of(number: int) -> str:
    return f"{JOB}-shard-{number}"


# ---------------------------------------------------------------------------------- phases


def phase_raw(files: list[Path], db_path: Path) -> dict[str, Any]:
    db = sqlite3.connect(db_path, isolation_level=None)
    for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "cache_size = -65536",
                   "temp_store = MEMORY"):
        db.execute(f"PRAGMA {pragma}")
    db.execute("CREATE TABLE results (custom_id TEXT PRIMARY KEY, status_code INTEGER, body BLOB)")
    sql = "INSERT INTO results (custom_id, status_code, body) VALUES (?, ?, ?)"
    count = 0
    started = time.perf_counter()
    for path in files:
        with path.open("rb") as handle:
            for chunk in _chunks(handle):
                rows = []
                for raw in chunk:
                    line = orjson.loads(raw)
                    rows.append((line["custom_id"], line["response"]["status_code"], raw))
                db.execute("BEGIN IMMEDIATE")
                db.executemany(sql, rows)
                db.execute("COMMIT")
                count += len(rows)
    elapsed = time.perf_counter() - started
    db.close()
    return {"lines": count, "seconds": elapsed, "peak_rss_mb": peak_rss_mb()}


def phase_ours(files: list[Path], ledger_path: Path, profile: bool) -> dict[str, Any]:
    from jobs import load_prices, price_for
    from pipeline.reconcile import ReconcileReport, apply_file
    from state import Ledger

    price = price_for(MODEL, load_prices())
    total = ReconcileReport()
    rss_at_100k: float | None = None
    profiler = cProfile.Profile() if profile else None
    with Ledger.open(ledger_path) as ledger:
        started = time.perf_counter()
        for number, path in enumerate(files):
            shard = {"key": shard_of(number), "batch_id": f"batch_{number:026d}"}
            if profiler:
                profiler.enable()
            total.add(apply_file(ledger, path, shard, f"file_{number:026d}", price))
            if profiler:
                profiler.disable()
            if rss_at_100k is None and total.lines >= 100_000:
                rss_at_100k = peak_rss_mb()
        elapsed = time.perf_counter() - started
        counts = ledger.request_counts()
    result: dict[str, Any] = {"lines": total.lines, "seconds": elapsed, "peak_rss_mb": peak_rss_mb(),
                              "rss_at_100k_mb": rss_at_100k, "succeeded": counts.get("succeeded", 0),
                              "quarantined": total.quarantined, "duplicates": total.duplicates}
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        out.write("\n--- by own time ---\n")
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        result["profile"] = out.getvalue()
    return result


def phase_ledger_only(files: list[Path], ledger_path: Path) -> dict[str, Any]:
    """``Ledger.record_results`` on records parsed beforehand (parse not timed)."""
    from jobs import load_prices, price_for
    from pipeline.reconcile import _parse_line
    from state import Ledger, ResultRecord

    price = price_for(MODEL, load_prices())
    seconds = 0.0
    count = 0
    with Ledger.open(ledger_path) as ledger:
        for number, path in enumerate(files):
            with path.open("rb") as handle:
                records = [_parse_line(raw, f"batch_{number}", price) for raw in handle]
            kept = [r for r in records if isinstance(r, ResultRecord)]
            started = time.perf_counter()
            ledger.record_results(kept)
            seconds += time.perf_counter() - started
            count += len(kept)
    return {"lines": count, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def _chunks(handle: io.BufferedReader) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for raw in handle:
        chunk.append(raw)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _child(phase: str, folder: Path, profile: bool) -> dict[str, Any]:
    """Run one phase in a fresh interpreter, so its peak RSS is its own."""
    command = [sys.executable, __file__, "--phase", phase, "--data", str(folder)]
    if profile:
        command.append("--profile")
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{done.stderr.decode()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--file-lines", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true", help="cProfile apply_file; print the top.")
    parser.add_argument("--shuffle", action="store_true",
                        help="Scramble the lines within each file (default: the shard's order).")
    parser.add_argument("--no-ledger-only", action="store_true", help="Skip the ledger-only phase.")
    parser.add_argument("--phase", choices=["raw", "ours", "ledger-only"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:  # a child: one measurement, as JSON on stdout
        files = sorted(args.data.glob("output-*.jsonl"))
        if args.phase == "raw":
            result = phase_raw(files, args.data / "raw.sqlite")
        elif args.phase == "ours":
            result = phase_ours(files, args.data / "ledger.sqlite", args.profile)
        else:
            result = phase_ledger_only(files, args.data / "ledger-only.sqlite")
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="groqbatch-bench-reconcile-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        files = generate(folder, args.lines, args.file_lines, shuffle=args.shuffle)
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        prepare_ledger(folder / "ledger.sqlite", args.lines, args.file_lines)
        if not args.no_ledger_only:
            prepare_ledger(folder / "ledger-only.sqlite", args.lines, args.file_lines)
        order = "shuffled within each file" if args.shuffle else "in shard (custom_id) order"
        print(f"{args.lines:,} result lines ({order}) in {len(files)} files of ≤{args.file_lines:,} "
              f"({size_mb:,.0f} MB, {size_mb * 1e6 / args.lines:,.0f} B/line); "
              f"data and ledgers ready in {time.perf_counter() - started:.1f} s")
        raw = _child("raw", folder, False)
        ours = _child("ours", folder, args.profile)
        only = None if args.no_ledger_only else _child("ledger-only", folder, False)

    # The work must have been done before any figure is printed: a ratio from a run that wrote
    # nothing is worse than none.
    problems = []
    if ours["succeeded"] != args.lines:
        problems.append(f"{ours['succeeded']:,} of {args.lines:,} requests succeeded")
    if ours["quarantined"] or ours["duplicates"]:
        problems.append(f"{ours['quarantined']} quarantined, {ours['duplicates']} duplicates")
    if ours["lines"] != args.lines or raw["lines"] != args.lines:
        problems.append(f"read {ours['lines']:,} (ours) and {raw['lines']:,} (raw) lines of "
                        f"{args.lines:,}")
    if only is not None and only["lines"] != args.lines:
        problems.append(f"ledger-only recorded {only['lines']:,} of {args.lines:,}")
    if problems:
        sys.exit("work not done, no figures: " + "; ".join(problems))
    raw_rate = raw["lines"] / raw["seconds"]
    ours_rate = ours["lines"] / ours["seconds"]
    print(f"raw orjson.loads + sqlite3 executemany : {raw_rate:>9,.0f} lines/s  "
          f"({raw['seconds']:.1f} s)  peak RSS {raw['peak_rss_mb']:.0f} MB")
    print(f"reconcile.apply_file (ours)            : {ours_rate:>9,.0f} lines/s  "
          f"({ours['seconds']:.1f} s)  peak RSS {ours['peak_rss_mb']:.0f} MB  "
          f"= {ours_rate / raw_rate:.0%} of raw (target ≥ 50%)")
    if only is not None:
        only_rate = only["lines"] / only["seconds"]
        print(f"  of which Ledger.record_results alone : {only_rate:>9,.0f} lines/s  "
              f"({only['seconds']:.1f} s, records parsed beforehand) = {only_rate / raw_rate:.0%} of raw")
    if ours["rss_at_100k_mb"]:
        growth = ours["peak_rss_mb"] / ours["rss_at_100k_mb"]
        print(f"peak RSS of ours after 100,000 lines {ours['rss_at_100k_mb']:.0f} MB, after "
              f"{ours['lines']:,} {ours['peak_rss_mb']:.0f} MB = {growth:.2f}x (target ≤ 1.3x, < 300 MB)")
    print(f"ledger: {ours['succeeded']:,} succeeded, {ours['quarantined']} quarantined, "
          f"{ours['duplicates']} duplicates")
    if "profile" in ours:
        print(ours["profile"])


if __name__ == "__main__":
    main()
