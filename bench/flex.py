"""Flex fallback throughput and pacing, each beside its reference, in one run.

    .venv/bin/python bench/flex.py                         # 2,000 requests at 8; 600 rpm; 6,000 tpm
    .venv/bin/python bench/flex.py --size tiny             # a few seconds: the bench's own test
    .venv/bin/python bench/flex.py --rpm 600 --limited-requests 300 --skip throughput

Three parts, against ``groqbatch serve`` in its own process on a loopback port (so the server
does not share this process's GIL), every job a ``mode = "sync"`` job whose requests all go
through :func:`pipeline.flex.finish_leftovers`, into a fresh SQLite ledger:

1. **Throughput** (no limits, ``--chat-latency 0``): requests/s of the fallback — ledger moves,
   pacing, recording included — beside a bare ``httpx.AsyncClient`` loop posting the same
   bodies (with ``service_tier = "flex"``) at the same concurrency.
2. **Requests per minute** (the server's flex tier limited as Groq limits it: ``--rpm``
   requests a minute, a daily budget far away, so the requests headers — the day's, as Groq's
   table says — tell nothing about the minute: the pacer has to find it from 429s). Real
   time: ``retry-after`` is in the server's seconds. The bucket is first drained with bare
   calls (another client spent the minute), then the fallback runs ``--limited-requests``
   requests. The share is what it got answered over what the limit allowed in that time
   (``rpm / 60 x elapsed`` — the bucket held < 1 after the drain).
3. **Tokens per minute** (``--tpm`` on another model, no request limit): the tokens the
   fallback used a minute, over the limit (``x-ratelimit-limit-tokens``), and its 429s.

Each part first checks its work: every request of its ledger succeeded through flex with
exactly one result (none lost, none answered twice), else the bench says so on stderr and
exits 1 without printing a share. Then it prints figures and the targets (DESIGN.md: ≥ 90% of
the allowed requests a minute with ≤ 2% of calls answered 429 and nothing lost; ≥ 90% of the
allowed tokens a minute, with only the first call on a spent window refused) as met or not
— the machine may be shared, so a missed target is printed, not an exit code, unless
``--strict``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import load_job
from pipeline.errors import GroqBatchError
from pipeline.runner import RunSummary, run_job
from state import Ledger, RequestStatus
from tests.e2e.cli import ServeProcess

MODEL = "llama-3.1-8b-instant"


SIZES = {
    # throughput requests, repeat; rpm, limited requests; tpm, token requests
    "default": (2000, 3, 600, 500, 60000, 40),
    "tiny": (200, 1, 240, 24, 60000, 10),
}
TOKENS_MODEL = "llama-3.3-70b-versatile"
MAX_429_SHARE = 0.02
MIN_RPM_SHARE = 0.90


class WorkNotDone(Exception):
    """A part's ledger shows lost or twice-answered requests: no figure is printed for it."""


PAD = " ".join(f"word{i}" for i in range(300))
"""Makes a prompt of a few hundred tokens, for the tokens-per-minute part."""


def write_job(folder: Path, *, name: str, requests: int, concurrency: int, base_url: str,
              model: str = MODEL, pad: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "rows.jsonl").open("w") as out:
        for i in range(requests):
            text = f"bench row {i} of {name} {pad}".strip()
            out.write(json.dumps({"id": f"r{i:06d}", "text": text}) + "\n")
    config = folder / "job.toml"
    config.write_text("\n".join([
        f'name = "{name}"', 'backend = "local"', f'model = "{model}"', f'base_url = "{base_url}"',
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


async def bare_httpx(base_url: str, api_key: str, bodies: Iterable[dict[str, Any]], concurrency: int,
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
    """(requests, succeeded through flex with exactly one result, results rows) of a job's
    ledger."""
    spec = load_job(config)
    with sqlite3.connect(spec.ledger_target) as db:
        requests = db.execute("SELECT count(*) FROM rows WHERE job = ?", (spec.name,)).fetchone()[0]
        succeeded = db.execute(
            "SELECT count(*) FROM requests r JOIN results s ON s.custom_id = r.custom_id "
            "WHERE r.status = 'succeeded' AND s.status_code = 200 AND s.source = 'flex' "
            "AND (SELECT count(*) FROM results o WHERE o.custom_id = r.custom_id) = 1").fetchone()[0]
        results = db.execute("SELECT count(*) FROM results").fetchone()[0]
    return requests, succeeded, results


def check_done(config: Path, what: str, summary: RunSummary) -> tuple[int, int]:
    """(requests, succeeded once) — or :class:`WorkNotDone` when any was lost or doubled."""
    total, once, results = audit(config)
    if total == 0 or once != total or results != total:
        raise WorkNotDone(
            f"{what}: work not done, no figures — {once:,} of {total:,} requests succeeded once "
            f"through flex ({results:,} results); run {summary.requests}, fallback "
            f"{ {k: summary.fallback.get(k) for k in ('sent', 'status_counts', 'gave_up')} }, "
            f"notes {summary.notes}")
    return total, once


def run_fallback(config: Path) -> RunSummary:
    """One ``run_job`` of the bench's job; refused before anything is sent (an unknown model,
    say) is work not done, with the reason."""
    try:
        return anyio.run(lambda: run_job(load_job(config)))
    except GroqBatchError as exc:
        raise WorkNotDone(f"{config.parent.name}: work not done, no figures — the run was "
                          f"refused: {exc}") from None


def throughput(folder: Path, requests: int, concurrency: int, repeat: int, model: str) -> None:
    """Bare and flex in turns, ``repeat`` times each, on one server: the best of each is
    printed (the machine may be shared; turns expose both sides to the same noise)."""
    server = ServeProcess("--chat-latency", "0")
    server.wait_ready()
    bare: list[float] = []
    flex: list[float] = []
    try:
        # Warm the server (imports, first connections) so neither side pays for it.
        run_fallback(write_job(folder / "warm", name="warm", requests=50, concurrency=concurrency,
                               base_url=server.url, model=model))
        for turn in range(repeat):
            config = write_job(folder / f"flex{turn}", name=f"flex-throughput-{turn}",
                               requests=requests, concurrency=concurrency, base_url=server.url,
                               model=model)
            summary = run_fallback(config)
            total, once = check_done(config, "throughput", summary)
            report = summary.fallback
            flex.append(report["sent"] / report["elapsed_s"])
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


def pacing(server: ServeProcess, folder: Path, rpm: int, requests: int,
           concurrency: int, model: str) -> tuple[float, float]:
    """Part 2; (share of the allowed rate, share of calls answered 429)."""
    drain = [{"model": model, "messages": [{"role": "user", "content": f"drain {i}"}],
              "max_completion_tokens": 8} for i in range(rpm * 2)]
    config = write_job(folder / "limited", name="flex-paced", requests=requests,
                       concurrency=concurrency, base_url=server.url, model=model)
    drained, drain_s = anyio.run(lambda: bare_httpx(server.url, server.api_key, drain, 4,
                                                    until_429=True))
    drained_at = time.perf_counter()
    summary = run_fallback(config)
    window_s = time.perf_counter() - drained_at
    total, once = check_done(config, "requests per minute", summary)
    flex = summary.fallback
    # The bucket refills continuously at rpm/60 a second and held < 1 after the drain: from
    # then to the run's end (compile and ledger open included) the server admits at most this.
    rate = rpm / 60
    allowed = rate * window_s
    share = flex["succeeded"] / allowed
    refused = flex["status_counts"].get("429", 0)
    refused_share = refused / flex["sent"]
    print(f"2. requests per minute: a flex limit of {rpm}/min ({rate:g}/s) found from 429s "
          f"(the requests headers are the day's), concurrency {concurrency}")
    print(f"   drained the bucket: {drained} bare calls in {drain_s:.2f}s before the first 429")
    print(f"   flex fallback: {flex['succeeded']:,} answered in {flex['elapsed_s']:.2f}s of stage "
          f"({window_s:.2f}s since the drain, {allowed:.0f} allowed in it) = "
          f"{flex['succeeded'] / window_s * 60:.0f}/min of {rpm}/min → share {share:.1%} (target ≥ 90%)")
    print(f"   calls sent {flex['sent']:,}, answered 429: {refused} ({refused_share:.1%}, target ≤ 2%), "
          f"status counts {flex['status_counts']}, gave up {flex['gave_up']}")
    print(f"   ledger: {once:,}/{total:,} succeeded once via flex → 0 lost")
    return share, refused_share


def drain_bodies(model: str, pad: str = "") -> Iterator[dict[str, Any]]:
    for i in range(10**6):
        yield {"model": model, "messages": [{"role": "user", "content": f"drain {i} {pad}"}],
               "max_completion_tokens": 8}


def tokens(server: ServeProcess, folder: Path, tpm: int, requests: int,
           concurrency: int) -> tuple[float, int]:
    """Part 3; (tokens used over what the window allowed, calls answered 429)."""
    config = write_job(folder / "tokens", name="flex-tokens", requests=requests,
                       concurrency=concurrency, base_url=server.url, model=TOKENS_MODEL, pad=PAD)
    drained, _ = anyio.run(lambda: bare_httpx(server.url, server.api_key,
                                              drain_bodies(TOKENS_MODEL, PAD), 4, until_429=True))
    drained_at = time.perf_counter()
    summary = run_fallback(config)
    window_s = time.perf_counter() - drained_at
    total, once = check_done(config, "tokens per minute", summary)
    flex = summary.fallback
    used = flex["prompt_tokens"] + flex["completion_tokens"]
    # The window held less than one drain call's tokens after the drain (at most one of the
    # fallback's, which are larger) and refills at tpm/60 a second.
    allowed = tpm / 60 * window_s + used / max(once, 1)
    refused = flex["status_counts"].get("429", 0)
    refused_share = refused / flex["sent"]
    print(f"3. tokens per minute: a flex limit of {tpm:,} tokens/min (the tokens headers), "
          f"{requests} requests of ~{used / max(once, 1):.0f} tokens, concurrency {concurrency}")
    print(f"   drained the window: {drained} bare calls before the first 429")
    print(f"   flex fallback: {used:,} tokens in {window_s:.2f}s since the drain ({allowed:,.0f} "
          f"allowed in it) = {used / window_s * 60:,.0f}/min of {tpm:,}/min → share "
          f"{used / allowed:.1%}; answered 429: {refused} ({refused_share:.1%}); "
          f"ledger {once:,}/{total:,} succeeded once")
    return used / allowed, refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="default: 2,000 requests x3; 500 at 600 rpm; 40 at 60,000 tpm. "
                             "tiny: 200; 24 at 240 rpm; 10 at 60,000 tpm")
    parser.add_argument("--requests", type=int, help="requests for the throughput part")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rpm", type=int, help="the flex requests-per-minute limit of part 2")
    parser.add_argument("--limited-requests", type=int, help="requests for part 2")
    parser.add_argument("--tpm", type=int, help="the flex tokens-per-minute limit of part 3")
    parser.add_argument("--repeat", type=int, help="turns of the throughput part")
    parser.add_argument("--skip", choices=["throughput", "limits"], action="append", default=[],
                        help="leave a part out (limits: parts 2 and 3)")
    parser.add_argument("--model", default=MODEL, help="the model of parts 1 and 2")
    parser.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    args = parser.parse_args()
    requests, repeat, rpm, limited, tpm, token_requests = SIZES[args.size]
    requests, repeat = args.requests or requests, args.repeat or repeat
    rpm, limited, tpm = args.rpm or rpm, args.limited_requests or limited, args.tpm or tpm
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="groqbatch-bench-flex-") as tmp:
        folder = Path(tmp)
        try:
            if "throughput" not in args.skip:
                throughput(folder, requests, args.concurrency, repeat, args.model)
            if "limits" not in args.skip:
                server = ServeProcess(
                    "--chat-latency", "0",
                    "--rate-limit", f"{args.model}@flex=rpm:{rpm},rpd:10000000",
                    "--rate-limit", f"{TOKENS_MODEL}@flex=tpm:{tpm},rpd:10000000")
                server.wait_ready()
                try:
                    share, refused = pacing(server, folder, rpm, limited, args.concurrency, args.model)
                    token_share, token_refused = tokens(server, folder, tpm, token_requests,
                                                        args.concurrency)
                finally:
                    server.stop()
                verdicts.append(f"≥ 90% of the allowed rpm: {'met' if share >= MIN_RPM_SHARE else 'NOT met'}")
                verdicts.append("≤ 2% of calls answered 429: "
                                + ("met" if refused <= MAX_429_SHARE else "NOT met"))
                # On a spent window the first call cannot know: one 429 at most.
                verdicts.append("≥ 90% of the allowed tpm, one 429 at most: "
                                + ("met" if token_share >= 0.9 and token_refused <= 1 else "NOT met"))
        except WorkNotDone as exc:
            print(exc, file=sys.stderr)
            return 1
    if verdicts:
        print("targets: nothing lost: met; " + "; ".join(verdicts))
        if args.strict and any("NOT met" in v for v in verdicts):
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
