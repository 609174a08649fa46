"""Two input rows with one id, as a user meets them: ``validate`` and ``run`` stop with both
lines (exit 2); with ``on_duplicate_id = "last"`` the run keeps the last row, and the export
gives it its own answer. The real command in a subprocess, on the in-process local server."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.cli import run_cli

ROWS = [
    {"id": "r0", "text": "one"},
    {"id": "r1", "text": "other"},
    {"id": "r0", "text": "two"},
]


def write_job(directory: Path, on_duplicate_id: str | None = None) -> Path:
    """The quickstart's shape, with a tiny input whose id r0 is on lines 1 and 3."""
    (directory / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    policy = '"' + on_duplicate_id + '"' if on_duplicate_id else None
    config = directory / "job.toml"
    config.write_text(
        'name = "dupes"\nbackend = "local"\nmodel = "llama-3.1-8b-instant"\n'
        '[input]\npath = "rows.jsonl"\nid_column = "id"\n'
        + (f"on_duplicate_id = {policy}\n" if policy else "")
        + '[prompt]\nuser = "Say {{ text }}"\nmax_completion_tokens = 48\n'
        "[policy]\npoll_interval_min_s = 0.2\npoll_interval_max_s = 2.0\n"
        '[output]\npath = "out.jsonl"\n'
    )
    return config


def test_validate_and_run_stop_at_a_duplicate_id(tmp_path: Path) -> None:
    config = write_job(tmp_path)
    message = (f'error: {tmp_path / "rows.jsonl"}:3: duplicate id "r0" (first seen at line 1) '
               '(set [input] on_duplicate_id = "first" or "last" to keep one)')
    for command in ("validate", "run"):
        result = run_cli(command, str(config), timeout_s=60)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.strip() == message, command
    assert not (tmp_path / "out.jsonl").exists()


def test_run_with_last_gives_the_kept_row_its_own_answer(tmp_path: Path) -> None:
    config = write_job(tmp_path, "last")
    validated = run_cli("validate", "--json", str(config))
    assert validated.returncode == 0, validated.stderr
    assert json.loads(validated.stdout)["duplicate_rows"] == 1
    run = run_cli("run", "--json", str(config), timeout_s=60)
    assert run.returncode == 0, run.stderr
    exported = run_cli("export", str(config))
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["id"], r["text"], r["groqbatch_status"]) for r in rows] == [
        ("r1", "other", "succeeded"), ("r0", "two", "succeeded")]
    assert "two" in rows[1]["groqbatch_answer"]
    assert "one" not in rows[1]["groqbatch_answer"]
