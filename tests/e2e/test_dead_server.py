"""``groqbatch run`` against a server that is not there (a closed port) or is broken (an HTML
502 page for every call): it stops within ``give_up_after_s`` with exit 1 and one line naming
the server and what it answered — not "will try again" forever — and the ledger is as it was,
so the next run, once the server is back, finishes the job."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from jobs import load_job
from tests.e2e.cli import ServeProcess, free_port, run_cli
from tests.integration.lifecycle import MODEL

ROWS = 12
GIVE_UP_AFTER_S = 2
KEY = "gsk_local_emulator_key"
BAD_GATEWAY_PAGE = (b"<html><head><title>502 Bad Gateway</title></head>"
                    b"<body><center><h1>502 Bad Gateway</h1></center></body></html>")


def write_job(folder: Path, base_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text(
        "".join(f'{{"id": "r{i:02d}", "text": "row {i}"}}\n' for i in range(ROWS)))
    config = folder / "job.toml"
    config.write_text(
        f'name = "dead"\nbackend = "groq"\nbase_url = "{base_url}"\n'
        f"give_up_after_s = {GIVE_UP_AFTER_S}\nmodel = \"{MODEL}\"\n"
        '[input]\npath = "rows.jsonl"\nid_column = "id"\n'
        '[prompt]\nuser = "Say {{ text }}"\nmax_completion_tokens = 16\n'
        "[policy]\nmax_lines_per_shard = 6\npoll_interval_min_s = 0.2\npoll_interval_max_s = 1\n")
    return config


def point_at(config: Path, base_url: str) -> None:
    text = config.read_text()
    config.write_text(re.sub(r'(?m)^base_url = ".*"$', f'base_url = "{base_url}"', text))


def ledger_state(config: Path) -> tuple[dict[str, int], int]:
    """Requests by status, and results stored."""
    with sqlite3.connect(load_job(config).ledger_target) as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM requests GROUP BY status"))
        results = db.execute("SELECT count(*) FROM results").fetchone()[0]
    return statuses, results


def gives_up(config: Path, base_url: str, answered: str) -> None:
    """The run stops in time, exit 1, one line on stderr naming the server and its answer."""
    started = time.monotonic()
    result = run_cli("run", "--quiet", str(config), timeout_s=60, GROQ_API_KEY=KEY)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert elapsed < 30
    assert "Traceback" not in result.stderr
    assert "will try again" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.match(
        rf"error: the server at {re.escape(base_url)}/openai/v1 has not answered for "
        rf"\d+(\.\d)?s \((GET|POST) /files: {answered}\); nothing recorded is lost — run again "
        r"when it is back", lines[0]), lines[0]
    seconds = float(re.search(r"for (\d+(?:\.\d)?)s", lines[0]).group(1))  # type: ignore[union-attr]
    assert seconds >= GIVE_UP_AFTER_S


def finishes_once_back(config: Path, tmp_path: Path) -> None:
    """Nothing was recorded as failed or answered; with a server back, the next run finishes."""
    statuses, results = ledger_state(config)
    assert statuses == {"queued": ROWS}
    assert results == 0
    status = run_cli("status", "--json", str(config))
    assert status.returncode == 0, status.stderr

    serve = ServeProcess("--time-scale", "3600", "--throughput", "50", api_key=KEY)
    try:
        serve.wait_ready()
        point_at(config, serve.url)
        again = run_cli("run", "--quiet", str(config), timeout_s=60, GROQ_API_KEY=KEY)
    finally:
        serve.stop()
    assert again.returncode == 0, again.stderr
    assert ledger_state(config) == ({"succeeded": ROWS}, ROWS)


def test_a_closed_port_stops_the_run_with_one_message_and_the_next_run_resumes(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # bound once and released: nothing listens there
    config = write_job(tmp_path / "job", dead)
    gives_up(config, dead, r"ConnectError: .+")
    finishes_once_back(config, tmp_path)


@contextmanager
def bad_gateway() -> Iterator[tuple[str, list[str]]]:
    """A loopback server answering every call as a proxy in front of a dead upstream does: 502
    and an HTML page. Its URL, and the calls it got."""
    calls: list[str] = []

    class BadGateway(BaseHTTPRequestHandler):
        def answer(self) -> None:
            calls.append(f"{self.command} {self.path}")
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(502, "Bad Gateway")
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(BAD_GATEWAY_PAGE)))
            self.end_headers()
            self.wfile.write(BAD_GATEWAY_PAGE)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), BadGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_proxy_answering_html_502_pages_stops_the_run(tmp_path: Path) -> None:
    with bad_gateway() as (url, calls):
        config = write_job(tmp_path / "job", url)
        gives_up(config, url, rf"HTTP 502 Bad Gateway \(text/html, {len(BAD_GATEWAY_PAGE)} bytes, "
                              r"not JSON\)")
    assert len(calls) > 1  # retried while within the limit
    # The model check asks once (and warns it could not); then only the upload is tried.
    assert calls[0] == "GET /openai/v1/models"
    assert all(call.startswith(("POST /openai/v1/files", "GET /openai/v1/files")) for call in calls[1:])
    finishes_once_back(config, tmp_path)
