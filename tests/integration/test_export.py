"""Structured outputs and export on real jobs: run against the local server in-process, with a
real SQLite ledger, then read every export back with its own reader."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import load_job
from pipeline import export as export_module
from pipeline.errors import ConfigError, InputError
from pipeline.export import FIXED_COLUMNS, export_job
from pipeline.runner import RunSummary, run_job
from state import Ledger

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["topic", "urgent", "score", "tags"],
    "properties": {
        "topic": {"type": "string", "enum": ["billing", "bug", "account"]},
        "urgent": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 0, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
TICKETS = [
    {"id": "t1", "plan": "free", "text": "I was charged twice"},
    {"id": "t2", "plan": "pro", "text": "The app crashes on start"},
    {"id": "t3", "plan": "pro", "text": "Please delete my account"},
    {"id": "t4", "plan": "free", "text": "Where is my invoice"},
    {"id": "t5", "plan": "team", "text": "The app crashes on start"},  # the same request as t2
    {"id": "t6", "plan": "free"},  # no text: rejected
    {"plan": "free", "text": "no id"},  # no id: rejected, keyed by its index
]


def write_config(directory: Path, rows: list[dict[str, Any]], *, response_format: str,
                 policy: str = "", fallback: str = "enabled = false",
                 max_tokens: int = 200) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = directory / "job.toml"
    config.write_text(
        'name = "tickets"\nbackend = "local"\nmodel = "llama-3.1-8b-instant"\n'
        '[input]\npath = "tickets.jsonl"\nid_column = "id"\n'
        '[prompt]\nuser = "Ticket: {{ text }}"\nseed = 7\n'
        f"max_completion_tokens = {max_tokens}\n{response_format}\n"
        "[policy]\nmax_lines_per_shard = 3\npoll_interval_min_s = 0.05\npoll_interval_max_s = 0.2\n"
        f"{policy}\n[policy.fallback]\n{fallback}\n"
        "[local]\ntime_scale = 3600\n"
        '[output]\npath = "out/tickets.jsonl"\n'
    )
    return config


def schema_job(directory: Path, rows: list[dict[str, Any]] = TICKETS) -> Path:
    inline = json.dumps(SCHEMA).replace('":', '" =')  # a TOML inline table
    fmt = f'[prompt.response_format]\ntype = "json_schema"\nname = "ticket"\nschema = {inline}'
    return write_config(directory, rows, response_format=fmt)


def run(config: Path) -> RunSummary:
    summary = anyio.run(run_job, load_job(config))
    assert summary.finished
    return summary


def export(config: Path, **options: Any) -> Any:
    spec = load_job(config)
    with Ledger.open(spec.ledger_target) as ledger:
        return export_job(spec, ledger, **options)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_jsonl_export_joins_every_row_with_fan_out_rejections_and_parsed_fields(
        tmp_path: Path) -> None:
    config = schema_job(tmp_path)
    run(config)
    report = export(config)
    assert report.path == str(tmp_path / "out" / "tickets.jsonl")
    assert (report.format, report.rows) == ("jsonl", 7)
    assert report.statuses == {"succeeded": 5, "rejected": 2}
    rows = read_jsonl(Path(report.path))
    assert [r.get("id") for r in rows] == ["t1", "t2", "t3", "t4", "t5", "t6", None]  # input order
    by_id = {r["groqbatch_row_key"]: r for r in rows}
    for row, ticket in zip(rows, TICKETS, strict=True):
        assert {k: row[k] for k in ticket} == ticket  # every input column, as read
    ok = [r for r in rows if r["groqbatch_status"] == "succeeded"]
    for row in ok:
        parsed = orjson.loads(row["groqbatch_answer"])
        assert {k: row[k] for k in SCHEMA["properties"]} == parsed  # one column per field
        assert parsed["topic"] in ("billing", "bug", "account")
        assert row["groqbatch_error"] is None
        assert row["groqbatch_tier"] == "batch"
        assert row["groqbatch_prompt_tokens"] > 0
        assert row["groqbatch_completion_tokens"] > 0
    # Fan-out: t2 and t5 asked the same thing, were sent once, and both have the answer.
    assert by_id["t2"]["groqbatch_custom_id"] == by_id["t5"]["groqbatch_custom_id"]
    assert by_id["t2"]["groqbatch_answer"] == by_id["t5"]["groqbatch_answer"]
    assert by_id["t2"]["plan"] != by_id["t5"]["plan"]
    assert len({r["groqbatch_custom_id"] for r in ok}) == 4
    # Rejected rows are there, with their reasons and no request.
    assert by_id["t6"]["groqbatch_status"] == "rejected"
    assert "text" in by_id["t6"]["groqbatch_error"]
    assert by_id["t6"]["groqbatch_custom_id"] is None
    assert by_id["#6"]["groqbatch_error"] == "id column 'id' is missing or empty"
    # The parsed output is what the ledger stored at reconcile time.
    spec = load_job(config)
    with sqlite3.connect(spec.ledger_target) as db:
        stored = dict(db.execute("SELECT custom_id, parsed_json FROM results").fetchall())
    assert len(stored) == 4
    assert orjson.loads(stored[by_id["t1"]["groqbatch_custom_id"]]) == {
        k: by_id["t1"][k] for k in SCHEMA["properties"]}


def test_csv_export_reads_back_with_a_fixed_header(tmp_path: Path) -> None:
    config = schema_job(tmp_path)
    run(config)
    report = export(config, path=tmp_path / "tickets.csv")
    assert report.format == "csv"
    with Path(report.path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames
    assert header == ["id", "plan", "text", *FIXED_COLUMNS, "topic", "urgent", "score", "tags"]
    assert len(rows) == 7
    by_id = {r["groqbatch_row_key"]: r for r in rows}
    t1 = by_id["t1"]
    parsed = orjson.loads(t1["groqbatch_answer"])
    assert t1["topic"] == parsed["topic"]
    assert t1["urgent"] == ("true" if parsed["urgent"] else "false")
    assert int(t1["score"]) == parsed["score"]
    assert orjson.loads(t1["tags"]) == parsed["tags"]  # nested values as JSON text
    assert by_id["t2"]["groqbatch_answer"] == by_id["t5"]["groqbatch_answer"]
    assert by_id["t6"]["text"] == ""  # a column the row lacks: an empty cell
    assert by_id["t6"]["topic"] == ""
    assert by_id["#6"]["groqbatch_status"] == "rejected"


def test_parquet_export_reads_back_typed(tmp_path: Path) -> None:
    config = schema_job(tmp_path)
    run(config)
    report = export(config, format="parquet")
    assert report.path == str(tmp_path / "out" / "tickets.parquet")  # the suffix follows
    table = pq.read_table(report.path)
    assert table.num_rows == 7
    schema = table.schema
    assert schema.field("urgent").type == pa.bool_()
    assert schema.field("score").type == pa.int64()
    assert schema.field("tags").type == pa.list_(pa.string())
    assert schema.field("groqbatch_prompt_tokens").type == pa.int64()
    rows = {r["groqbatch_row_key"]: r for r in table.to_pylist()}
    parsed = orjson.loads(rows["t3"]["groqbatch_answer"])
    assert {k: rows["t3"][k] for k in SCHEMA["properties"]} == parsed
    assert rows["t2"]["groqbatch_answer"] == rows["t5"]["groqbatch_answer"]
    assert rows["t6"]["groqbatch_status"] == "rejected"
    assert rows["t6"]["score"] is None


def test_only_succeeded_leaves_out_rejected_rows(tmp_path: Path) -> None:
    config = schema_job(tmp_path)
    run(config)
    report = export(config, only_succeeded=True)
    assert (report.rows, report.left_out, report.statuses) == (5, 2, {"succeeded": 5})
    assert {r["groqbatch_status"] for r in read_jsonl(Path(report.path))} == {"succeeded"}


def test_since_last_exports_only_rows_answered_after_the_last_export(tmp_path: Path) -> None:
    config = schema_job(tmp_path, TICKETS[:4])
    run(config)
    first = export(config, since_last=True)  # no export before: everything
    assert (first.rows, first.since) == (4, None)
    middle = export(config, since_last=True)
    assert (middle.rows, middle.since) == (0, first.exported_at)  # nothing answered since
    new = [{"id": "t7", "plan": "pro", "text": "Refund my order"},
           {"id": "t8", "plan": "pro", "text": "Two-factor codes never arrive"}]
    schema_job(tmp_path, TICKETS[:4] + new)
    run(config)
    second = export(config, since_last=True, path=tmp_path / "new.jsonl")
    assert second.since == middle.exported_at
    assert (second.rows, second.left_out) == (2, 4)
    assert [r["id"] for r in read_jsonl(tmp_path / "new.jsonl")] == ["t7", "t8"]
    assert export(config).rows == 6  # a full export still has everything


def test_a_failed_export_leaves_no_partial_file_and_the_last_one_intact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = schema_job(tmp_path)
    run(config)
    good = Path(export(config).path)
    before = good.read_bytes()
    # The input breaks after a few rows: the export fails midway, after writing some chunks.
    with (tmp_path / "tickets.jsonl").open("a") as handle:
        handle.write("{not json\n")
    monkeypatch.setattr(export_module, "CHUNK_ROWS", 2)
    with pytest.raises(InputError, match="not valid JSON"):
        export(config)
    assert good.read_bytes() == before
    assert sorted(p.name for p in good.parent.iterdir()) == ["tickets.jsonl"]
    with pytest.raises(InputError):
        export(config, format="parquet")
    assert sorted(p.name for p in good.parent.iterdir()) == ["tickets.jsonl"]
    spec = load_job(config)
    with Ledger.open(spec.ledger_target) as ledger:
        last = ledger.last_export(spec.name)
    assert last is not None
    assert last.rows == 7  # failed exports are not recorded


def test_an_unknown_format_is_a_config_error(tmp_path: Path) -> None:
    config = schema_job(tmp_path, TICKETS[:1])
    run(config)
    with pytest.raises(ConfigError, match="cannot tell the export format"):
        export(config, path=tmp_path / "out.txt")


def test_json_object_answers_go_in_one_parsed_column(tmp_path: Path) -> None:
    config = write_config(tmp_path, TICKETS[:3], response_format='response_format = "json_object"')
    run(config)
    rows = read_jsonl(Path(export(config).path))
    assert all(r["groqbatch_parsed"] == orjson.loads(r["groqbatch_answer"]) for r in rows)
    report = export(config, format="csv")
    with Path(report.path).open(newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert orjson.loads(cells[0]["groqbatch_parsed"]) == orjson.loads(cells[0]["groqbatch_answer"])


# -- invalid outputs ----------------------------------------------------------------------------


def truncating_job(directory: Path, *, retries: int) -> Path:
    """json_object answers cut off by max_completion_tokens: never valid JSON, every time."""
    return write_config(directory, TICKETS[:4], response_format='response_format = "json_object"',
                        policy=f"retry_invalid_output = {retries}",
                        fallback="enabled = true\nmax_attempts = 6", max_tokens=6)


def ledger_requests(config: Path) -> list[sqlite3.Row]:
    spec = load_job(config)
    with sqlite3.connect(spec.ledger_target) as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT status, attempts, last_error, tier FROM requests").fetchall()


def test_an_invalid_output_fails_at_once_without_retries(tmp_path: Path) -> None:
    config = truncating_job(tmp_path, retries=0)
    summary = run(config)
    assert summary.requests["failed"] == 4
    assert summary.reconciled["invalid_output"] == 4
    assert summary.fallback["sent"] == 0
    for request in ledger_requests(config):
        assert (request["status"], request["attempts"]) == ("failed", 1)
        assert request["last_error"].startswith("invalid_output: not valid JSON")
    rows = read_jsonl(Path(export(config).path))
    assert {r["groqbatch_status"] for r in rows} == {"failed"}
    assert all(r["groqbatch_error"].startswith("invalid_output: ") for r in rows)
    assert all(r["groqbatch_answer"] and r["groqbatch_parsed"] is None for r in rows)  # raw answer
    assert all(r["groqbatch_completion_tokens"] > 0 for r in rows)  # paid for all the same


def test_an_invalid_output_is_retried_through_the_fallback_up_to_the_cap(tmp_path: Path) -> None:
    config = truncating_job(tmp_path, retries=2)
    summary = run(config)
    assert summary.requests["failed"] == 4
    assert summary.left_retryable == 0
    # One batch attempt, then two retries on flex (the server answers the same way each time).
    assert summary.fallback["sent"] == 8
    assert summary.fallback["invalid_output"] == 8
    assert summary.fallback["gave_up"] == 4
    for request in ledger_requests(config):
        assert (request["status"], request["attempts"], request["tier"]) == ("failed", 3, "flex")
        assert request["last_error"].startswith("invalid_output: not valid JSON")
        assert request["last_error"].endswith("(gave up after 3 attempts)")
