"""``groqbatch serve --data-dir``: a server killed mid-batch and started again on the same
directory finishes the batch, as a cron-driven user relies on."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from pipeline.emulator.config import DEFAULT_API_KEY
from tests.e2e.cli import ServeProcess, run_cli

LINES = 20
HEADERS = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


def serve(data_dir: Path) -> ServeProcess:
    # 10x time, 1 line per emulated second: validation 0.2 s, lines 2 s, finalizing 0.2 s (real).
    server = ServeProcess("--data-dir", str(data_dir), "--time-scale", "10", "--throughput", "1")
    server.wait_ready()
    return server


def poll(client: httpx.Client, batch_id: str, until: Any, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found: dict[str, Any] = client.get(f"/batches/{batch_id}").raise_for_status().json()
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_killed_server_finishes_its_batch_after_a_restart(tmp_path: Path) -> None:
    lines = b"".join(
        orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "llama-3.1-8b-instant",
                               "messages": [{"role": "user", "content": f"q{i}"}]}}) + b"\n"
        for i in range(LINES)
    )
    server = serve(tmp_path)
    try:
        with httpx.Client(base_url=server.url + "/openai/v1", headers=HEADERS, timeout=10) as client:
            file_id = client.post("/files", files={"file": ("in.jsonl", lines)},
                                  data={"purpose": "batch"}).raise_for_status().json()["id"]
            batch_id = client.post("/batches", json={
                "input_file_id": file_id, "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}).raise_for_status().json()["id"]
            running = poll(client, batch_id, lambda b: b["request_counts"]["completed"] > 0)
            assert running["status"] == "in_progress", running
    finally:
        server.proc.send_signal(signal.SIGKILL)
        server.stop()

    server = serve(tmp_path)
    try:
        with httpx.Client(base_url=server.url + "/openai/v1", headers=HEADERS, timeout=10) as client:
            assert client.get(f"/files/{file_id}/content").content == lines
            done = poll(client, batch_id, lambda b: b["status"] == "completed")
            assert done["status"] == "completed", done
            assert done["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
            output = client.get(f"/files/{done['output_file_id']}/content").raise_for_status()
            ids = sorted(orjson.loads(line)["custom_id"] for line in output.content.splitlines())
            assert ids == sorted(f"r{i}" for i in range(LINES))
    finally:
        code = server.stop()
    assert code in (0, -signal.SIGTERM), server.stderr
    assert "Traceback" not in server.stderr


def test_a_data_dir_of_another_version_is_refused_by_name(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "emulator.sqlite3") as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '7')")
    db.close()
    result = run_cli("serve", "--data-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert str(tmp_path) in result.stderr
    assert "schema version 7" in result.stderr
    assert "Traceback" not in result.stderr
