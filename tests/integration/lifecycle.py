"""Helpers for the batch-lifecycle tests: a job config in a folder, the ledger read back, and
the answer the local server gives each request (to check every stored answer is its own).

    config = write_job(tmp_path, rows=20, shard_lines=6, base_url=server.url)
    summary = await run_job(load_job(config))
    view = read_ledger(load_job(config))
    assert_own_answers(view)
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from jobs import JobSpec
from pipeline.emulator.config import DEFAULT_API_KEY, Scenario
from pipeline.emulator.models import ModelRegistry
from pipeline.emulator.responder import Responder
from state import Ledger
from state.engine import decompress
from state.records import StoredResult

MODEL = "llama-3.1-8b-instant"
# Poll fast; rows short, so a shard of 6 lines runs in ~0.1 s at the fixture's pace.
FAST_POLICY = {"poll_interval_min_s": 0.05, "poll_interval_max_s": 0.2}


def write_job(directory: Path, *, name: str = "life", rows: int = 20, shard_lines: int = 6,
              base_url: str | None = None, local: dict[str, Any] | None = None,
              images: bool = False, photo: Callable[[int], str] | None = None,
              scenario: Scenario | None = None, policy: dict[str, Any] | None = None,
              fallback: bool = False) -> Path:
    """A job config (and its JSONL input of ``rows`` rows) in ``directory``; its path.

    With ``images`` the prompt has an image part from the ``photo`` column, which is empty
    (no image part) unless ``photo(i)`` gives a URL: on a text-only model that request is
    answered 400. ``scenario`` is written to a file and named in ``[local]`` (in-process).
    """
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "rows.jsonl").open("w") as out:
        for i in range(rows):
            row = {"id": f"r{i:03d}", "text": f"row number {i} asks about topic {i * 7 % 13}",
                   "photo": photo(i) if photo else ""}
            out.write(json.dumps(row) + "\n")
    lines = [f'name = "{name}"', 'backend = "local"', f'model = "{MODEL}"']
    if base_url is not None:
        lines.append(f'base_url = "{base_url}"')
    lines += ["[input]", 'path = "rows.jsonl"', 'id_column = "id"',
              "[prompt]", 'user = "Row {{ id }}: {{ text }}"', "max_completion_tokens = 48",
              "seed = 7"]
    if images:
        lines.append('images = ["{{ photo }}"]')
    lines += ["[policy]", f"max_lines_per_shard = {shard_lines}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in {**FAST_POLICY, **(policy or {})}.items()]
    # The batch path alone: what it leaves undone stays retryable in the ledger, to be seen
    # (not re-batched either: leftovers = "flex", with the fallback off, leaves it be).
    lines += ["[policy.fallback]", f"enabled = {'true' if fallback else 'false'}",
              'leftovers = "flex"']
    local = dict(local or {})
    if scenario is not None:
        (directory / "scenario.json").write_text(scenario.model_dump_json())
        local["scenario"] = "scenario.json"
    if local:
        lines.append("[local]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in local.items()]
    config = directory / "job.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


# -- the ledger, read back ----------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRequest:
    custom_id: str
    status: str
    body: dict[str, Any]
    shard_key: str | None
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    last_error: str | None


@dataclass
class LedgerView:
    counts: dict[str, int]
    requests: dict[str, StoredRequest]
    results: dict[str, StoredResult]
    shards: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    totals: dict[str, float] = field(default_factory=dict)

    def with_status(self, status: str) -> dict[str, StoredRequest]:
        return {cid: r for cid, r in self.requests.items() if r.status == status}


def read_ledger(spec: JobSpec) -> LedgerView:
    with Ledger.open(spec.ledger_target) as ledger:
        counts = ledger.request_counts(spec.name)
        shards = ledger.shards(spec.name)
        totals = ledger.request_totals(spec.name)
        with sqlite3.connect(spec.ledger_target) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT r.* FROM requests r WHERE r.custom_id IN "
                "(SELECT custom_id FROM rows WHERE job = ? AND custom_id IS NOT NULL)", (spec.name,)
            ).fetchall()
            quarantine = [dict(q) for q in db.execute("SELECT * FROM quarantine ORDER BY id")]
        requests = {
            row["custom_id"]: StoredRequest(
                row["custom_id"], row["status"], orjson.loads(decompress(row["body"])),
                row["shard_key"], row["attempts"], row["prompt_tokens"], row["completion_tokens"],
                row["cost_usd"], row["last_error"],
            )
            for row in rows
        }
        results = {r.custom_id: r for r in ledger.results_for(list(requests))}
    return LedgerView(counts, requests, results, shards, quarantine, totals)


_RESPONDER = Responder(ModelRegistry())


def expected_answer(body: dict[str, Any]) -> str:
    """What the local server answers this request (its text is a digest of the request)."""
    content: str = _RESPONDER.complete(body, service_tier="on_demand")["choices"][0]["message"]["content"]
    return content


def answer_of(result: StoredResult) -> dict[str, Any]:
    assert result.body is not None, f"{result.custom_id}: no body stored"
    body: dict[str, Any] = orjson.loads(result.body)
    return body


def assert_own_answers(view: LedgerView) -> None:
    """Every succeeded request holds its own answer, once: the text the server gives that very
    body, the tokens its usage reports (not doubled), and no two requests the same text."""
    texts: set[str] = set()
    succeeded = view.with_status("succeeded")
    for custom_id, request in succeeded.items():
        result = view.results[custom_id]
        assert result.status_code == 200
        assert result.source == "batch"
        body = answer_of(result)
        text = body["choices"][0]["message"]["content"]
        assert text == expected_answer(request.body), f"{custom_id} holds another request's answer"
        assert text not in texts
        texts.add(text)
        usage = body["usage"]
        assert (request.prompt_tokens, request.completion_tokens) == (
            usage["prompt_tokens"], usage["completion_tokens"]), f"{custom_id}: tokens counted twice?"
        assert request.cost_usd > 0
        assert request.attempts == 1
    paid = sum(r.prompt_tokens + r.completion_tokens for r in view.requests.values())
    assert paid == view.totals["prompt_tokens"] + view.totals["completion_tokens"]


def assert_each_answered_once(view: LedgerView, total: int) -> None:
    """Every request settled (succeeded/failed/retryable), none left awaiting an answer."""
    assert len(view.requests) == total
    awaiting = {cid for cid, r in view.requests.items() if r.status not in ("succeeded", "failed", "retryable")}
    assert not awaiting, f"left awaiting an answer: {sorted(awaiting)[:5]}"
    assert all(s["step"] == "reconciled" for s in view.shards)


# -- the server -----------------------------------------------------------------------------------


def put_scenario(base_url: str, scenario: Scenario) -> None:
    """Replace a running server's fault scenario (``PUT /_emulator/scenario``)."""
    response = httpx.put(f"{base_url}/_emulator/scenario", content=scenario.model_dump_json(),
                         headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}, timeout=10)
    response.raise_for_status()


@contextmanager
def access_log() -> Iterator[list[str]]:
    """The request lines (``GET /path?query``) a uvicorn server on a thread logs meanwhile;
    start the server with ``log_level="debug"`` so it writes its access log."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.args, tuple) and len(record.args) >= 3:
                seen.append(f"{record.args[1]} {record.args[2]}")

    handler = Collect()
    logger = logging.getLogger("uvicorn.access")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
