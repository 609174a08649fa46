"""Flex fallback throughput and pacing, each beside its reference, in one run.

    .venv/bin/python bench/flex.py                                  # 2,000 requests at 8
    .venv/bin/python bench/flex.py --requests 5000 --concurrency 16 --rpm 600 --limited-requests 200

Two parts, each against ``groqbatch serve`` in its own process on a loopback port (so the
server does not share this process's GIL), every job a ``mode = "sync"`` job whose requests
all go through :func:`pipeline.flex.finish_leftovers`, into a fresh SQLite ledger:

1. **Throughput** (no limits, ``--chat-latency 0``): requests/s of the fallback — ledger moves,
   pacing, recording included — beside a bare ``httpx.AsyncClient`` loop posting the same
   bodies (with ``service_tier = "flex"``) at the same concurrency.
2. **Pacing** (the server's flex tier limited to ``--rpm`` requests per minute, real time:
   the rate-limit headers and ``retry-after`` are in the server's seconds, so a faster virtual
   clock would make every pause that many times too long): the bucket is first drained with
   bare calls, then the fallback runs ``--limited-requests`` requests. The share is the
   requests it got answered over what the limit allowed in that time
   (``rpm / 60 x elapsed``, plus what the bucket held when it started); the ledger is then
   checked for lost requests (every one succeeded, once, with one result).

Prints figures; no assertions (DESIGN.md: the fallback uses ≥ 90% of an allowed
requests/minute limit with nothing lost).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import load_job
from pipeline.runner import RunSummary, run_job
from state import Ledger, RequestStatus
from tests.e2e.cli import ServeProcess

MODEL = "llama-3.1-8b-instant"


def write_job(folder: Path, *, name: str, requests: int, concurrency: int, base_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "rows.jsonl").open("w") as out:
        for i in range(requests):
            out.write(json.dumps({"id": f"r{i:06d}", "text": f"bench row {i} of {name}"}) + "\n")
    config = folder / "job.toml"
    config.write_text("\n".join([
        f'name = "{name}"', 'backend = "local"', f'model = "{MODEL}"', f'base_url = "{base_url}"',
        "[input]", 'path = "rows.jsonl"', 'id_column = "id"',
        "[prompt]", 'user = "Row {{ id }}: {{ text }}"', "max_completion_tokens = 32",
        "[policy]", 'mode = "sync"',
        "[policy.fallback]", f"concurrency = {concurrency}", "max_attempts = 20",
    ]) + "\n")
    return config


def bodies_of(config: Path) -> list[dict[str, Any]]:
    spec = load_job(config)
    with Ledger.open(spec.ledger_target) as ledger:
        return [orjson.loads(r.body) for r in ledger.iter_requests(spec.name, RequestStatus.SUCCEEDED)]


async def bare_httpx(base_url: str, api_key: str, bodies: list[dict[str, Any]], concurrency: int,
                     *, until_429: bool = False) -> tuple[int, float]:
    """POST each body once at ``concurrency``; (answered 200, seconds). With ``until_429``,
    stop at the first 429 (to drain a rate-limit bucket)."""
    queue = iter(bodies)
    ok = 0
    stop = False

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal ok, stop
        for body in queue:
            if stop:
                return
            response = await http.post("/openai/v1/chat/completions",
                                       content=orjson.dumps({**body, "service_tier": "flex"}),
                                       headers={"Content-Type": "application/json"})
            if response.status_code == 200:
                ok += 1
            elif until_429 and response.status_code == 429:
                stop = True

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60,
                                 headers={"Authorization": f"Bearer {api_key}"}) as http:
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(concurrency):
                group.start_soon(worker, http)
        return ok, time.perf_counter() - started


def audit(config: Path) -> tuple[int, int, int]:
    """(requests, succeeded with exactly one result, results rows) of a job's ledger."""
    spec = load_job(config)
    with sqlite3.connect(spec.ledger_target) as db:
        requests = db.execute("SELECT count(*) FROM rows WHERE job = ?", (spec.name,)).fetchone()[0]
        succeeded = db.execute(
            "SELECT count(*) FROM requests r JOIN results s ON s.custom_id = r.custom_id "
            "WHERE r.status = 'succeeded' AND s.status_code = 200 AND s.source = 'flex'").fetchone()[0]
        results = db.execute("SELECT count(*) FROM results").fetchone()[0]
    return requests, succeeded, results


def run_fallback(config: Path) -> RunSummary:
    return anyio.run(lambda: run_job(load_job(config)))


def throughput(folder: Path, requests: int, concurrency: int, repeat: int) -> None:
    """Bare and flex in turns, ``repeat`` times each, on one server: the best of each is
    printed (the machine may be shared; turns expose both sides to the same noise)."""
    server = ServeProcess("--chat-latency", "0")
    server.wait_ready()
    bare: list[float] = []
    flex: list[float] = []
    try:
        # Warm the server (imports, first connections) so neither side pays for it.
        run_fallback(write_job(folder / "warm", name="warm", requests=50, concurrency=concurrency,
                               base_url=server.url))
        for turn in range(repeat):
            config = write_job(folder / f"flex{turn}", name=f"flex-throughput-{turn}",
                               requests=requests, concurrency=concurrency, base_url=server.url)
            summary = run_fallback(config)
            report = summary.fallback
            flex.append(report["sent"] / report["elapsed_s"])
            total, once, _ = audit(config)
            ok, bare_s = anyio.run(bare_httpx, server.url, server.api_key, bodies_of(config),
                                   concurrency)
            bare.append(ok / bare_s)
            print(f"   turn {turn + 1}: bare {bare[-1]:7.1f} req/s | flex stage {flex[-1]:7.1f} req/s "
                  f"(whole run_job {total / summary.elapsed_s:7.1f}) | ledger {once:,}/{total:,} "
                  f"succeeded once, status counts {report['status_counts']}")
    finally:
        server.stop()
    print(f"1. throughput, {requests:,} requests at concurrency {concurrency}, no limits, no latency "
          f"(best of {repeat})")
    print(f"   bare httpx.AsyncClient  {max(bare):8.1f} req/s")
    print(f"   flex fallback (stage)   {max(flex):8.1f} req/s  ({max(flex) / max(bare):.0%} of bare)")


def pacing(folder: Path, rpm: int, requests: int, concurrency: int) -> None:
    server = ServeProcess("--chat-latency", "0", "--rate-limit", f"{MODEL}@flex=rpm:{rpm}")
    server.wait_ready()
    try:
        drain = [{"model": MODEL, "messages": [{"role": "user", "content": f"drain {i}"}],
                  "max_completion_tokens": 8} for i in range(rpm * 2)]
        config = write_job(folder / "limited", name="flex-paced", requests=requests,
                           concurrency=concurrency, base_url=server.url)
        drained, drain_s = anyio.run(lambda: bare_httpx(server.url, server.api_key, drain, 4,
                                                        until_429=True))
        drained_at = time.perf_counter()
        summary = run_fallback(config)
        window_s = time.perf_counter() - drained_at
    finally:
        server.stop()
    flex = summary.fallback
    elapsed = flex["elapsed_s"]
    # The bucket refills continuously at rpm/60 a second and held < 1 after the drain: from
    # then to the run's end (compile and ledger open included) the server admits at most this.
    rate = rpm / 60
    allowed = rate * window_s
    total, once, _ = audit(config)
    print(f"2. pacing against a flex limit of {rpm} requests/minute ({rate:g}/s), concurrency {concurrency}")
    print(f"   drained the bucket: {drained} bare calls in {drain_s:.2f}s before the first 429")
    print(f"   flex fallback: {flex['succeeded']:,} answered in {elapsed:.2f}s of stage "
          f"({window_s:.2f}s since the drain, {allowed:.0f} allowed in it) = "
          f"{flex['succeeded'] / window_s * 60:.0f}/min of {rpm}/min "
          f"→ share {flex['succeeded'] / allowed:.1%} (target ≥ 90%)")
    print(f"   calls sent {flex['sent']:,}, requeued {flex['requeued']:,}, status counts "
          f"{flex['status_counts']}, gave up {flex['gave_up']}")
    lost = total - once
    print(f"   ledger: {once:,}/{total:,} succeeded once via flex → {lost} lost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests for the throughput part")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rpm", type=int, default=600, help="the flex limit for the pacing part")
    parser.add_argument("--limited-requests", type=int, default=150,
                        help="requests for the pacing part (150 at 600 rpm: ~15 s)")
    parser.add_argument("--repeat", type=int, default=3, help="turns of the throughput part")
    parser.add_argument("--skip", choices=["throughput", "pacing"], help="run only the other part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="groqbatch-bench-flex-") as tmp:
        folder = Path(tmp)
        if args.skip != "throughput":
            throughput(folder, args.requests, args.concurrency, args.repeat)
        if args.skip != "pacing":
            pacing(folder, args.rpm, args.limited_requests, args.concurrency)


if __name__ == "__main__":
    main()
