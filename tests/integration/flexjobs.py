"""Helpers for the flex-fallback tests: a job config with the fallback on (its ``[policy]``,
``[policy.fallback]`` and ``[policy.budget]`` tables written from dicts), and the checks every
test makes on the ledger afterwards.

    config = write_flex_job(tmp_path, base_url=server.url, policy={"mode": "sync"},
                            fallback={"max_attempts": 2})
    summary = await run_job(load_job(config))
    view = read_ledger(load_job(config))
    flexed = assert_settled_once(view, ROWS)

(The job-writing part follows ``tests/integration/lifecycle.write_job``, which has no way to
set the fallback's own options.)
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from jobs import JobSpec, load_prices, price_for
from tests.integration.lifecycle import FAST_POLICY, MODEL, LedgerView, answer_of, expected_answer

PRICE = price_for(MODEL, load_prices())
assert PRICE is not None


def write_flex_job(directory: Path, *, name: str = "flex", rows: int = 20, shard_lines: int = 6,
                   base_url: str | None = None, photo: Callable[[int], str] | None = None,
                   policy: dict[str, Any] | None = None, fallback: dict[str, Any] | None = None,
                   budget: dict[str, Any] | None = None, local: dict[str, Any] | None = None,
                   first_row: int = 0) -> Path:
    """A job config (and its JSONL input of ``rows`` rows from ``first_row``) in ``directory``;
    its path. With ``photo`` the prompt has an image part from the ``photo`` column: on a
    text-only model a row with a URL there is answered 400."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "rows.jsonl").open("w") as out:
        for i in range(first_row, first_row + rows):
            row = {"id": f"r{i:03d}", "text": f"row number {i} asks about topic {i * 7 % 13}",
                   "photo": photo(i) if photo else ""}
            out.write(json.dumps(row) + "\n")
    lines = [f'name = "{name}"', 'backend = "local"', f'model = "{MODEL}"']
    if base_url is not None:
        lines.append(f'base_url = "{base_url}"')
    lines += ["[input]", 'path = "rows.jsonl"', 'id_column = "id"',
              "[prompt]", 'user = "Row {{ id }}: {{ text }}"', "max_completion_tokens = 48",
              "seed = 7"]
    if photo is not None:
        lines.append('images = ["{{ photo }}"]')
    tables = {"policy": {"max_lines_per_shard": shard_lines, **FAST_POLICY, **(policy or {})},
              "policy.fallback": {"enabled": True, **(fallback or {})},
              "policy.budget": budget or {}, "local": local or {}}
    for table, values in tables.items():
        if values:
            lines.append(f"[{table}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    config = directory / "job.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def tiers(spec: JobSpec) -> dict[str, str | None]:
    """custom_id → the tier its request was last sent through."""
    with sqlite3.connect(spec.ledger_target) as db:
        return dict(db.execute("SELECT custom_id, tier FROM requests"))


def assert_settled_once(view: LedgerView, total: int) -> dict[str, str]:
    """Every request ended succeeded (one result row, its own answer, status 200, tokens and
    cost those of that answer — counted once, priced at the tier that answered) or failed with
    its reason. Returns custom_id → the source of its result (``batch`` / ``flex``)."""
    assert len(view.requests) == total
    unsettled = {cid: r.status for cid, r in view.requests.items() if r.status not in ("succeeded", "failed")}
    assert not unsettled, f"not settled: {unsettled}"
    sources: dict[str, str] = {}
    for custom_id, request in view.requests.items():
        if request.status == "failed":
            assert request.last_error, f"{custom_id} failed without a reason"
            continue
        result = view.results[custom_id]
        sources[custom_id] = str(result.source)
        assert result.status_code == 200
        body = answer_of(result)
        assert body["choices"][0]["message"]["content"] == expected_answer(request.body)
        usage = body["usage"]
        assert (request.prompt_tokens, request.completion_tokens) == (
            usage["prompt_tokens"], usage["completion_tokens"]), f"{custom_id}: tokens counted twice?"
        tier = "flex" if result.source == "flex" else "batch"
        if tier == "flex":
            assert body["service_tier"] == "flex"
        assert request.cost_usd == PRICE.cost(usage["prompt_tokens"], usage["completion_tokens"], tier)
    paid = sum(r.prompt_tokens + r.completion_tokens for r in view.requests.values())
    assert paid == view.totals["prompt_tokens"] + view.totals["completion_tokens"]
    return sources


def flex_error(request_last_error: str | None) -> dict[str, Any]:
    """The JSON a flex requeue keeps after ``flex: `` in ``last_error``."""
    assert request_last_error is not None
    assert request_last_error.startswith("flex: ")
    text = request_last_error.removeprefix("flex: ").split(" (gave up after ")[0]
    value: dict[str, Any] = orjson.loads(text)
    return value


@contextmanager
def chat_log() -> Iterator[list[tuple[float, int]]]:
    """(monotonic time, status) of each chat completion a uvicorn server on a thread answers
    meanwhile; start the server with ``log_level="debug"`` so it writes its access log."""
    seen: list[tuple[float, int]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            args = record.args
            if isinstance(args, tuple) and len(args) >= 5 and "chat/completions" in str(args[2]):
                seen.append((time.monotonic(), int(args[4])))  # type: ignore[call-overload]

    handler = Collect()
    logger = logging.getLogger("uvicorn.access")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
