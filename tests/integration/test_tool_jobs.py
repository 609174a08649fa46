"""Tool-call jobs end to end on the local server (real HTTP on a loopback port): a forced
function's arguments become export columns; answers that are calls (content null) are answers;
arguments that do not fit are invalid outputs, asked again when ``retry_invalid_output`` says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobs import load_job
from pipeline.emulator import Emulator, EmulatorConfig
from pipeline.emulator.serve import ThreadedServer
from pipeline.export import export_job
from pipeline.runner import run_job
from state import Ledger
from tests.integration.lifecycle import FAST_POLICY, read_ledger

pytestmark = pytest.mark.anyio

ROWS = 8
ORDER = {"type": "object", "required": ["sku", "quantity"], "additionalProperties": False,
         "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1},
                        "gift": {"type": "boolean"}}}
SPAM = {"type": "object", "properties": {"reason": {"type": "string"}}}


def batch_server() -> ThreadedServer:
    config = EmulatorConfig(time_scale=3600, throughput_lines_per_s=50, validation_s=1,
                            finalizing_s=1, cancelling_s=1)
    return ThreadedServer(emulator=Emulator(config))


def toml_value(value: Any) -> str:
    """A JSON value as a TOML inline value (objects as inline tables)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def write_tool_job(directory: Path, base_url: str | None, *, tool_choice: Any,
                   order: dict[str, Any] = ORDER,
                   policy: dict[str, Any] | None = None, fallback: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "emails.jsonl").open("w") as out:
        for i in range(ROWS):
            out.write(json.dumps({"id": f"e{i}", "text": f"please send {i + 1} mugs, order {i}"}) + "\n")
    lines = ['name = "orders"', 'backend = "local"',
             *([f'base_url = "{base_url}"'] if base_url else []),
             'model = "llama-3.1-8b-instant"', "[input]", 'path = "emails.jsonl"', 'id_column = "id"',
             "[prompt]", 'user = "{{ text }}"', f"tool_choice = {toml_value(tool_choice)}"]
    for name, parameters in (("record_order", order), ("flag_spam", SPAM)):
        lines += ["[[prompt.tools]]", 'type = "function"',
                  f"function = {toml_value({'name': name, 'parameters': parameters})}"]
    lines += ["[policy]", "max_lines_per_shard = 3"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in {**FAST_POLICY, **(policy or {})}.items()]
    lines += ["[policy.fallback]", f"enabled = {'true' if fallback else 'false'}"]
    config = directory / "job.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def exported(spec: Any, **options: Any) -> list[dict[str, Any]]:
    with Ledger.open(spec.ledger_target) as ledger:
        report = export_job(spec, ledger, **options)
    return [json.loads(line) for line in Path(report.path).read_text().splitlines()]


async def test_forced_function_arguments_become_columns(tmp_path: Path) -> None:
    forced = {"type": "function", "function": {"name": "record_order"}}
    with batch_server() as server:
        spec = load_job(write_tool_job(tmp_path, server.url, tool_choice=forced))
        summary = await run_job(spec)
    assert summary.finished
    assert summary.requests["succeeded"] == ROWS
    view = read_ledger(spec)
    for request in view.requests.values():
        result = view.results[request.custom_id]
        message = orjson.loads(result.body or b"null")["choices"][0]["message"]
        assert message["content"] is None
        (call,) = message["tool_calls"]
        assert orjson.loads(result.parsed or "null") == orjson.loads(call["function"]["arguments"])
    rows = exported(spec)
    assert len(rows) == ROWS
    for row in rows:
        assert row["groqbatch_status"] == "succeeded"
        assert row["groqbatch_answer"] is None
        (call,) = row["groqbatch_tool_calls"]
        arguments = json.loads(call["function"]["arguments"])
        assert call["function"]["name"] == "record_order"
        assert (row["sku"], row["quantity"]) == (arguments["sku"], arguments["quantity"])
        assert row["quantity"] >= 1
        assert list(row)[-4:] == ["groqbatch_tool_calls", "sku", "quantity", "gift"]


async def test_auto_answers_some_rows_with_calls_and_some_with_text(tmp_path: Path) -> None:
    with batch_server() as server:
        spec = load_job(write_tool_job(tmp_path, server.url, tool_choice="auto"))
        summary = await run_job(spec)
    assert summary.requests["succeeded"] == ROWS
    rows = exported(spec, path=tmp_path / "out.jsonl")
    called = [row for row in rows if row["groqbatch_tool_calls"]]
    texts = [row for row in rows if row["groqbatch_answer"] is not None]
    assert called
    assert texts
    assert len(called) + len(texts) == ROWS
    assert all(row["groqbatch_parsed"] is None for row in rows)  # nothing forced: no columns


async def test_arguments_that_do_not_fit_are_invalid_output_and_retried(tmp_path: Path) -> None:
    # The server fills schemas but does not honour "pattern": every sku it writes misses it.
    strict_sku = {**ORDER, "properties": {**ORDER["properties"],
                                          "sku": {"type": "string", "pattern": "^[0-9]{6}$"}}}
    forced = {"type": "function", "function": {"name": "record_order"}}
    with batch_server() as server:
        spec = load_job(write_tool_job(tmp_path, server.url, tool_choice=forced, order=strict_sku,
                                       policy={"retry_invalid_output": 1}, fallback=True))
        summary = await run_job(spec)
    assert summary.finished
    assert summary.requests["failed"] == ROWS
    view = read_ledger(spec)
    for request in view.requests.values():
        assert request.last_error is not None
        assert request.last_error.startswith("invalid_output: does not fit the schema at $.sku")
        assert request.attempts == 2  # the batch, then once more through the fallback
    rows = exported(spec)
    assert all(row["groqbatch_status"] == "failed" for row in rows)
    assert all(row["groqbatch_tool_calls"] for row in rows)  # the calls are kept, for a person
    assert all(row["sku"] is None for row in rows)
