"""Every way a job can be wrong is refused before anything is spent, and a run that ends with
failures says so in its exit code: the real command in a subprocess, its exit code and the first
line it prints (docs/src/guide/exit-codes.md is the table these check)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs import load_job
from tests.e2e.cli import ServeProcess, free_port, run_cli
from tests.integration.lifecycle import MODEL, read_ledger

ROWS = 12


def write_config(directory: Path, *, model: str = MODEL, user: str = "Row {{ id }}: {{ text }}",
                 rows: int = ROWS, input_path: str = "rows.jsonl", base_url: str | None = None,
                 allow_empty: bool = False, fallback: bool = True) -> Path:
    """A small local job; ``model`` is on line 3 and ``path`` (of ``[input]``) on line 6, as the
    error messages must say."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "rows.jsonl").open("w") as out:
        for i in range(rows):
            out.write(json.dumps({"id": f"r{i:03d}", "text": f"row {i} asks about {i % 5}"}) + "\n")
    lines = [
        'name = "loud"',
        'backend = "local"',
        f'model = "{model}"',
        *([f'base_url = "{base_url}"'] if base_url else []),
        "[input]",
        'id_column = "id"',
        f'path = "{input_path}"',
        *(["allow_empty = true"] if allow_empty else []),
        "[prompt]",
        f'user = "{user}"',
        "max_completion_tokens = 32",
        "[policy]",
        "max_lines_per_shard = 6",
        "poll_interval_min_s = 0.05",
        "poll_interval_max_s = 0.2",
        "[policy.fallback]",
        f"enabled = {'true' if fallback else 'false'}",
        'triggers = ["expired", "missing", "retryable_errors", "deadline", "failed"]',
    ]
    config = directory / "job.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def line_of(config: Path, start: str) -> int:
    return next(n for n, text in enumerate(config.read_text().splitlines(), 1) if text.startswith(start))


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def ledger_of(config: Path) -> Path:
    return Path(load_job(config).ledger_target)


# -- unknown models --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["run", "--quiet"]])
def test_an_unknown_model_is_exit_2_naming_the_model_line(tmp_path: Path, command: list[str]) -> None:
    config = write_config(tmp_path, model="llama-9-ultra")
    result = run_cli(*command, str(config))
    assert result.returncode == 2, result.stderr
    assert first_line(result.stderr).startswith(
        f"error: {config}:{line_of(config, 'model =')}: model: unknown model 'llama-9-ultra': "
        "the local server does not serve it")
    assert not ledger_of(config).exists(), "refused before a ledger (or a run) was made"


def test_a_near_miss_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, model="llama-3.1-8b-instnt")
    result = run_cli("validate", str(config))
    assert result.returncode == 2
    assert "did you mean 'llama-3.1-8b-instant'?" in first_line(result.stderr)


def test_an_unknown_adapter_model_on_the_local_server_is_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, model=f"ft:{MODEL}:acme:gone")
    result = run_cli("validate", str(config))
    assert result.returncode == 2
    assert first_line(result.stderr).startswith(
        f"error: {config}:3: model: unknown model 'ft:{MODEL}:acme:gone': the local server has "
        "no such adapter")


def test_a_running_server_is_asked_for_its_models(tmp_path: Path) -> None:
    serve = ServeProcess("--time-scale", "3600")
    try:
        serve.wait_ready()
        unknown = run_cli("plan", str(write_config(tmp_path / "a", model="llama-9-ultra",
                                                   base_url=serve.url)))
        known = run_cli("validate", str(write_config(tmp_path / "b", base_url=serve.url)))
    finally:
        serve.stop()
    assert unknown.returncode == 2, unknown.stderr
    assert first_line(unknown.stderr).startswith(
        f"error: {tmp_path / 'a' / 'job.toml'}:3: model: unknown model 'llama-9-ultra': "
        f"{serve.url} does not serve it")
    assert known.returncode == 0, known.stderr
    assert known.stderr == ""


def test_a_server_that_cannot_be_asked_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = write_config(tmp_path, model="llama-9-ultra", base_url=url)
    result = run_cli("validate", str(config))
    assert result.returncode == 0, result.stderr
    assert first_line(result.stderr).startswith(
        f"warning: model 'llama-9-ultra' not checked: could not list the models of {url}")
    assert first_line(result.stdout).startswith(f"{config}: job 'loud' is valid")


# -- nothing to send -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["run", "--quiet"]])
def test_every_row_rejected_is_exit_2(tmp_path: Path, command: list[str]) -> None:
    config = write_config(tmp_path, user="Row {{ id }}: {{ descrption }}")
    result = run_cli(*command, str(config))
    assert result.returncode == 2, result.stderr
    assert first_line(result.stderr).startswith(
        f"error: {config}:{line_of(config, '[prompt]')}: prompt: every row is rejected "
        f"({ROWS} of {ROWS}), nothing would be sent; first: row r000")
    assert "'descrption' is undefined" in first_line(result.stderr)
    assert "allow_empty = true" in first_line(result.stderr)


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["run", "--quiet"]])
def test_an_empty_input_is_exit_2(tmp_path: Path, command: list[str]) -> None:
    config = write_config(tmp_path, rows=0)
    result = run_cli(*command, str(config))
    assert result.returncode == 2, result.stderr
    assert first_line(result.stderr).startswith(
        f"error: {config}:{line_of(config, '[input]')}: input.allow_empty: the input has no rows")


def test_allow_empty_lets_an_empty_job_pass(tmp_path: Path) -> None:
    config = write_config(tmp_path, rows=0, allow_empty=True)
    for command in (["validate"], ["plan"], ["run", "--quiet"]):
        result = run_cli(*command, str(config))
        assert result.returncode == 0, (command, result.stderr)
    validated = run_cli("validate", str(config))
    assert first_line(validated.stdout) == f"{config}: job 'loud' is valid — 0 rows, 0 become " \
                                           "requests, 0 rejected"


def test_a_run_refused_after_it_started_is_recorded_as_failed(tmp_path: Path) -> None:
    config = write_config(tmp_path, user="{{ descrption }}")
    assert run_cli("run", "--quiet", str(config)).returncode == 2
    status = run_cli("status", "--json", str(config))
    assert status.returncode == 0, status.stderr
    (run,) = json.loads(status.stdout)["runs"]
    assert run["finished"] is not None, "not left looking as if it were still running"
    assert run["summary"]["exit_code"] == 2
    assert "every row is rejected" in run["summary"]["failed"]
    human = run_cli("status", str(config), COLUMNS="80")
    assert "error (2)" in human.stdout
    assert "run 1: " in human.stdout


# -- missing input ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["run", "--quiet"]])
def test_a_missing_input_names_input_path_and_its_line(tmp_path: Path, command: list[str]) -> None:
    config = write_config(tmp_path, input_path="nope.csv")
    result = run_cli(*command, str(config))
    assert result.returncode == 2, result.stderr
    assert first_line(result.stderr) == (
        f"error: {config}:{line_of(config, 'path =')}: input.path: input file "
        f"{tmp_path / 'nope.csv'} not found")
    assert not ledger_of(config).exists(), "no ledger, so no run that started and never finished"


# -- finished with failures ------------------------------------------------------------------


def run_summary(result: Any) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def test_failures_exit_4_with_the_count_and_reasons_and_the_fallback_stops_early(tmp_path: Path) -> None:
    # An adapter id the server does not list passes the check with a warning (Groq may not
    # list an organisation's adapters) — and then every call is a 404.
    model = f"ft:{MODEL}:acme:gone"
    serve = ServeProcess("--time-scale", "3600")
    try:
        serve.wait_ready()
        config = write_config(tmp_path, model=model, base_url=serve.url, rows=40)
        first = run_cli("run", "--quiet", "--json", str(config))
        again = run_cli("run", "--quiet", "--json", str(config))
        tolerated = run_cli("run", "--quiet", "--json", "--max-failed", "100%", str(config))
    finally:
        serve.stop()
    assert first.returncode == 4, first.stderr
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert errors[0].startswith("error: finished with failures: ")
    assert "requests failed" in errors[0]
    assert "left unsent (the fallback stopped: the same permanent error on every call)" in errors[0]
    assert "x model_not_found: The model" in errors[0]
    summary = run_summary(first)
    flex = summary["fallback"]
    assert flex["halted"].startswith("404 model_not_found")
    assert flex["sent"] <= 12, "stopped after a few identical 404s, not one per request"
    assert summary["left_retryable"] >= 40 - 12
    assert summary["unsent_reason"] == "the fallback stopped: the same permanent error on every call"
    reasons = dict(summary["failures"])
    assert any(reason.startswith("model_not_found: The model") for reason in reasons)
    assert any(reason.startswith("not sent: the fallback stopped after 5 calls") for reason in reasons)
    view = read_ledger(load_job(config))
    unsent = [r for r in view.requests.values() if r.status == "retryable" and "not sent" in (r.last_error or "")]
    assert all(r.attempts <= 1 for r in unsent), "a claim given back unsent costs no attempt"
    assert again.returncode == 4
    assert run_summary(again)["fallback"]["sent"] <= 12
    assert tolerated.returncode == 0, tolerated.stderr


def test_max_failed_must_be_a_count_or_a_percent(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli("run", "--max-failed", "lots", str(config))
    assert result.returncode == 2
    assert "--max-failed" in result.stderr
    assert "expected a count (5) or a percent (2%)" in result.stderr


# -- costs -----------------------------------------------------------------------------------


def test_a_second_run_that_sends_nothing_costs_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = run_cli("run", "--quiet", "--json", str(config))
    second = run_cli("run", "--quiet", "--json", str(config))
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    one, two = run_summary(first), run_summary(second)
    assert one["spent"]["cost_usd"] > 0
    assert one["spent"]["cost_usd"] == pytest.approx(one["totals"]["cost_usd"])
    assert two["spent"] == {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    assert two["totals"] == one["totals"]
    human = run_cli("run", str(config))
    assert "this run: 0 prompt + 0 completion tokens, cost $0.000000; the job so far:" in human.stdout

    status = run_cli("status", str(config), COLUMNS="80")
    assert status.returncode == 0
    assert f"cost ${one['totals']['cost_usd']:.6f} in all runs" in status.stdout
    runs = {line.split()[0]: line for line in status.stdout.splitlines()
            if line.strip()[:1].isdigit() and "finished" in line}
    assert runs["1"].rstrip().endswith(f"${one['spent']['cost_usd']:.6f}")
    assert runs["2"].rstrip().endswith("$0.000000")
    assert max(len(line) for line in status.stdout.splitlines()) <= 80


def test_plan_shows_cost_at_most_and_expected_from_earlier_answers(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    before = json.loads(run_cli("plan", "--json", str(config)).stdout)
    assert before["expected_from"] == "the upper bound"
    assert before["cost_expected_usd"] == pytest.approx(before["cost_batch_usd"])
    ran = run_summary(run_cli("run", "--quiet", "--json", str(config)))
    after = json.loads(run_cli("plan", "--json", "--refresh", str(config)).stdout)
    assert after["expected_from"] == f"{ROWS} earlier answers of this job"
    # Twelve answers again: expected is what they used, at most is every answer at 32 tokens.
    assert after["expected_prompt_tokens"] == ran["totals"]["prompt_tokens"]
    assert after["expected_completion_tokens"] == ran["totals"]["completion_tokens"]
    assert after["cost_expected_usd"] == pytest.approx(ran["totals"]["cost_usd"])
    assert after["max_completion_tokens"] == 32
    assert after["cost_batch_usd"] >= after["cost_expected_usd"]
    # The prompt estimate is the text's, within 15% of what the answers report.
    assert after["compile"]["est_prompt_tokens"] == pytest.approx(ran["totals"]["prompt_tokens"], rel=0.15)
    table = run_cli("plan", str(config), COLUMNS="80")
    assert "cost at most (batch, 50% off)" in table.stdout
    assert "cost expected (batch)" in table.stdout
