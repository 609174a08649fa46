"""Compile throughput: ``compile_job`` beside raw ``orjson.dumps`` + write, in one run.

    .venv/bin/python bench/compile.py              # 1,000,000 rows
    .venv/bin/python bench/compile.py --rows 20000

Writes a generated JSONL input to a temp dir, then measures, on the same rows:

* **raw**: build each body dict, ``orjson.dumps`` it, write the line (the floor we compare to);
* **build+shards**: templates, canonical JSON, custom_id, shard files — no ledger;
* **compile_job**: the real thing, into a fresh SQLite ledger (rows + requests + shards).

Prints rows/s, MB/s of shard output, the ratio to raw, and peak RSS (ru_maxrss) after each
phase. Each phase's outcome is checked before its figure is printed — every row written as a
line, and compile_job's shards holding one line per request, one request per row, with the
ledger agreeing — otherwise it exits 1 with the reason. Figures to read, not timed asserts.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import JobSpec, compile_job
from jobs.requests import RequestBuilder, batch_line
from jobs.shards import ShardWriter
from state import Ledger

MODEL = "llama-3.1-8b-instant"
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
    "jam",
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(path: Path, rows: int) -> int:
    with path.open("wb", buffering=1 << 20) as file:
        for i in range(rows):
            text = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(20 + i % 17))
            row = {"id": f"r{i:08d}", "title": f"Item {i}", "text": f"{text} #{i}"}
            file.write(orjson.dumps(row) + b"\n")
    return path.stat().st_size


def make_spec(folder: Path) -> JobSpec:
    data = {
        "name": "bench",
        "model": MODEL,
        "workdir": str(folder / "work"),
        "input": {"path": str(folder / "rows.jsonl"), "id_column": "id"},
        "prompt": {
            "system": "Summarise the text in one line.",
            "user": "{{ title }}: {{ text }}",
            "temperature": 0.2,
            "max_completion_tokens": 64,
        },
        "policy": {"max_lines_per_shard": 50_000},
    }
    return JobSpec.model_validate(data, context={"base_dir": folder})


def not_done(what: str) -> None:
    sys.exit(f"work not done, no figures: {what}")


def bench_raw(source: Path, out: Path) -> tuple[float, int]:
    """Read rows, build the body dict by hand, orjson.dumps, write: the floor."""
    started = time.perf_counter()
    written = 0
    with source.open("rb") as rows, out.open("wb", buffering=1 << 20) as file:
        for raw in rows:
            row = orjson.loads(raw)
            body = {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "Summarise the text in one line."},
                    {"role": "user", "content": f"{row['title']}: {row['text']}"},
                ],
                "temperature": 0.2,
                "max_completion_tokens": 64,
            }
            line = orjson.dumps({"custom_id": row["id"], "body": body}) + b"\n"
            file.write(line)
            written += len(line)
    return time.perf_counter() - started, written


def bench_build(spec: JobSpec, source: Path, folder: Path) -> tuple[float, int]:
    """Templates + canonical JSON + custom_id + shard files, without the ledger."""
    from jobs.inputs import read_jsonl

    started = time.perf_counter()
    builder = RequestBuilder(spec)
    written = 0
    writer = ShardWriter(folder, max_lines=50_000, max_bytes=100_000_000, job="bench")
    for _index, _line, row in read_jsonl(source):
        built = builder.build(row)
        line = batch_line(built.custom_id, built.body)
        writer.add(built.custom_id, line)
        written += len(line)
    writer.close()
    return time.perf_counter() - started, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-ledger", action="store_true", help="only raw and build+shards")
    args = parser.parse_args()
    rows = args.rows
    with tempfile.TemporaryDirectory(prefix="groqbatch-bench-") as tmp:
        folder = Path(tmp)
        size = generate(folder / "rows.jsonl", rows)
        print(f"input: {rows:,} rows, {size / 1e6:.1f} MB  (peak RSS {peak_rss_mb():.0f} MB)")
        spec = make_spec(folder)

        raw_s, raw_bytes = bench_raw(folder / "rows.jsonl", folder / "raw.jsonl")
        with (folder / "raw.jsonl").open("rb") as written:
            if (lines := sum(1 for _ in written)) != rows:
                not_done(f"raw wrote {lines:,} lines for {rows:,} rows")
        (folder / "raw.jsonl").unlink()
        raw_rate = rows / raw_s
        print(
            f"raw orjson+write : {raw_rate:10,.0f} rows/s  {raw_bytes / 1e6 / raw_s:7.1f} MB/s"
            f"  ({raw_s:.2f} s)  peak RSS {peak_rss_mb():.0f} MB"
        )

        build_s, build_bytes = bench_build(spec, folder / "rows.jsonl", folder / "build")
        lines = 0
        for shard in (folder / "build").glob("*.jsonl"):
            with shard.open("rb") as written:
                lines += sum(1 for _ in written)
        if lines != rows:
            not_done(f"build+shards wrote {lines:,} lines for {rows:,} rows")
        print(
            f"build+shards     : {rows / build_s:10,.0f} rows/s  {build_bytes / 1e6 / build_s:7.1f}"
            f" MB/s  ({build_s:.2f} s)  {rows / build_s / raw_rate:6.1%} of raw"
            f"  peak RSS {peak_rss_mb():.0f} MB"
        )
        if args.skip_ledger:
            return
        started = time.perf_counter()
        with Ledger.open(folder / "ledger.sqlite") as ledger:
            report = compile_job(spec, ledger)
            compile_s = time.perf_counter() - started
            queued = ledger.request_counts(spec.name)["queued"]
        lines = sum(s.lines for s in report.shards)
        if not (report.unique_requests == lines == queued == rows):
            not_done(f"compile_job: {report.unique_requests:,} requests, {lines:,} shard lines, "
                     f"{queued:,} queued for {rows:,} rows")
        shard_bytes = sum(s.bytes for s in report.shards)
        print(
            f"compile_job      : {rows / compile_s:10,.0f} rows/s  {shard_bytes / 1e6 / compile_s:7.1f}"
            f" MB/s  ({compile_s:.2f} s)  {rows / compile_s / raw_rate:6.1%} of raw"
            f"  peak RSS {peak_rss_mb():.0f} MB"
        )
        print(
            f"  {report.unique_requests:,} requests, {len(report.shards)} shards,"
            f" ~{report.est_prompt_tokens:,} prompt tokens"
        )


if __name__ == "__main__":
    main()
