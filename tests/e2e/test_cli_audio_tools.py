"""Audio and tool-call jobs as a user runs them: the real ``groqbatch`` command in a subprocess —
the shipped ``configs/transcribe.toml`` on the in-process local server, a forced-function job
against ``groqbatch serve`` in another process, both exported."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from tests.e2e.cli import ServeProcess, run_cli
from tests.integration.test_tool_jobs import ROWS, write_tool_job

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def run_json(*args: str, **env: str) -> dict[str, Any]:
    result = run_cli(*args, "--json", **env)
    assert result.returncode == 0, result.stderr
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def test_the_shipped_transcribe_config_runs_and_exports(tmp_path: Path) -> None:
    shutil.copytree(CONFIGS, tmp_path / "configs", ignore=shutil.ignore_patterns(".groqbatch"))
    config = tmp_path / "configs" / "transcribe.toml"
    summary = run_json("run", str(config))
    assert summary["finished"] is True
    assert summary["model"] == "whisper-large-v3-turbo"
    assert summary["requests"]["succeeded"] == 6
    assert summary["shards"]["reconciled"] == 2
    assert summary["totals"]["cost_usd"] > 0
    again = run_json("run", str(config))
    assert again["compile"]["to_send"] == 0

    exported = run_cli("export", str(config))
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "transcribe.jsonl").read_text().splitlines()]
    assert [row["call_id"] for row in rows] == ["C001", "C002", "C003", "C004", "C005", "C006"]
    for row in rows:
        assert row["groqbatch_status"] == "succeeded"
        assert row["duration"] == row["seconds"]  # the WAV's own length, read by the server
        assert row["segments"][-1]["end"] == row["seconds"]
        assert row["groqbatch_answer"]
    assert {row["parsed_language"] for row in rows} == {"english", "french", "german"}


def test_validate_names_the_line_of_a_field_the_endpoint_does_not_take(tmp_path: Path) -> None:
    text = (CONFIGS / "transcribe.toml").read_text().replace(
        "/v1/audio/transcriptions", "/v1/audio/translations").replace(
        '"whisper-large-v3-turbo"', '"whisper-large-v3"')
    config = tmp_path / "translate.toml"
    config.write_text(text)
    (tmp_path / "data").mkdir()
    shutil.copy(CONFIGS / "data" / "calls.jsonl", tmp_path / "data" / "calls.jsonl")
    result = run_cli("validate", str(config))
    assert result.returncode == 2
    line = next(i for i, source in enumerate(text.splitlines(), start=1)
                if source.startswith("language"))
    assert f"{config}:{line}: audio.language: /v1/audio/translations does not take language" \
        in result.stderr


def test_a_forced_function_job_against_serve_exports_csv(tmp_path: Path) -> None:
    serve = ServeProcess("--time-scale", "3600", "--throughput", "50")
    try:
        serve.wait_ready()
        forced = {"type": "function", "function": {"name": "record_order"}}
        config = write_tool_job(tmp_path, None, tool_choice=forced)
        summary = run_json("run", str(config), GROQ_BASE_URL=serve.url)
    finally:
        serve.stop()
    assert summary["requests"]["succeeded"] == ROWS
    out = tmp_path / "orders.csv"
    exported = run_cli("export", str(config), "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == ROWS
    for row in rows:
        (call,) = json.loads(row["groqbatch_tool_calls"])
        arguments = json.loads(call["function"]["arguments"])
        assert row["sku"] == arguments["sku"]
        assert int(row["quantity"]) == arguments["quantity"] >= 1
