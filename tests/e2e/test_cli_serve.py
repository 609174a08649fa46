"""``groqbatch serve`` as a user runs it: a real process on a loopback port."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import openai

from tests.e2e.cli import ServeProcess, run_cli


def test_selftest_drives_a_batch_and_a_chat_call() -> None:
    result = run_cli("serve", "--selftest")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "uploaded selftest.jsonl" in out
    assert "every custom_id matched: True" in out
    assert "chat (service_tier=flex)" in out
    assert out.rstrip().endswith("selftest passed")


def test_serve_answers_sdks_and_stops_cleanly() -> None:
    server = ServeProcess("--time-scale", "3600", api_key="gsk_test_key_for_e2e")
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=server.url + "/openai/v1", api_key="gsk_test_key_for_e2e", max_retries=0)
        models = [m.id for m in client.models.list()]
        assert "llama-3.1-8b-instant" in models
        wrong = httpx.get(server.url + "/openai/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    finally:
        code = server.stop()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert code in (0, -signal.SIGTERM), server.stderr
    assert "Traceback" not in server.stderr
    assert "gsk_test_key_for_e2e" not in server.stderr + server.stdout


def test_bad_scenario_file_is_named(tmp_path: Path) -> None:
    scenario = tmp_path / "faults.toml"
    scenario.write_text("[batch]\nexpire_after_fraction = 3\n")
    result = run_cli("serve", "--scenario", str(scenario))
    assert result.returncode == 2
    assert "faults.toml" in result.stderr
    assert "expire_after_fraction" in result.stderr


def test_bad_rate_limit_flag() -> None:
    result = run_cli("serve", "--rate-limit", "llama-3.1-8b-instant=rpm:lots")
    assert result.returncode == 2
    assert "MODEL[@TIER]=rpm:N" in result.stderr
