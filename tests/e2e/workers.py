"""Many ``groqbatch run`` workers on one job: starting them, and counting what the server saw.

The server's own journal (``GET /_emulator/requests``) is the independent count: batches
created, files uploaded, chat calls made, whatever the ledger says. Each batch's input file is
read back from the server, so a request sent in two batches is found too.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pipeline.emulator.config import DEFAULT_API_KEY
from state import Ledger
from tests.e2e.cli import clean_env, groqbatch_command

RUN_TIMEOUT_S = 120.0


def write_job(folder: Path, name: str, base_url: str, *, rows: int, shard_lines: int = 20,
              mode: str = "batch", texts: list[str] | None = None, fallback: bool = True) -> Path:
    """A job of ``rows`` distinct requests (or of ``texts``) against ``base_url``."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = texts if texts is not None else [f"{name}: row {i} wants a word" for i in range(rows)]
    with (folder / "rows.jsonl").open("w") as out:
        for i, text in enumerate(texts):
            out.write(json.dumps({"id": i, "text": text}) + "\n")
    config = folder / "job.toml"
    config.write_text(
        f'name = "{name}"\nbackend = "local"\nbase_url = "{base_url}"\n'
        'model = "llama-3.1-8b-instant"\n'
        '[input]\npath = "rows.jsonl"\nid_column = "id"\n'
        '[prompt]\nuser = "{{ text }}"\nmax_completion_tokens = 8\n'
        f'[policy]\nmode = "{mode}"\nmax_lines_per_shard = {shard_lines}\n'
        "poll_interval_min_s = 0.05\npoll_interval_max_s = 0.3\n"
        f"[policy.fallback]\nenabled = {'true' if fallback else 'false'}\nconcurrency = 4\n"
    )
    return config


def start_worker(config: Path, ledger_url: str, log: Path, *args: str,
                 worker_id: str | None = None, env: dict[str, str] | None = None
                 ) -> subprocess.Popen[bytes]:
    command = [*groqbatch_command(), "run", "--json", str(config), "--ledger", ledger_url, *args]
    if worker_id is not None:
        command += ["--worker-id", worker_id]
    out = log.open("wb")
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env=clean_env(**(env or {})), cwd=config.parent)
    finally:
        out.close()  # the child holds its own copy


def wait_all(procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> list[dict[str, Any]]:
    """Wait for every worker; each must exit 0. Returns their JSON summaries."""
    summaries = []
    for proc, log in zip(procs, logs, strict=True):
        code = proc.wait(timeout=RUN_TIMEOUT_S)
        text = log.read_text(errors="replace")
        assert code == 0, f"worker exited {code}:\n{text[-3000:]}"
        summaries.append(json.loads(text[text.index("{"):]))
    return summaries


@dataclass
class Journal:
    """What the server served, from its own journal."""

    entries: list[dict[str, Any]]

    def calls(self, method: str, suffix: str) -> list[dict[str, Any]]:
        return [e for e in self.entries
                if e["method"] == method and e["path"].rstrip("/").endswith(suffix)
                and e["status"] == 200]

    @property
    def batches_created(self) -> int:
        return len(self.calls("POST", "/batches"))

    @property
    def uploads(self) -> int:
        return len(self.calls("POST", "/files"))

    @property
    def chat_calls(self) -> int:
        return len([e for e in self.entries
                    if e["method"] == "POST" and e["path"].endswith("/chat/completions")])

    def chat_digests(self) -> Counter[str]:
        return Counter(e["digest"] for e in self.entries
                       if e["method"] == "POST" and e["path"].endswith("/chat/completions")
                       and e["status"] == 200)


def http(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30,
                        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})


def journal(base_url: str) -> Journal:
    with http(base_url) as client:
        response = client.get("/_emulator/requests")
        response.raise_for_status()
        return Journal(response.json()["data"])


def clear_journal(base_url: str) -> None:
    with http(base_url) as client:
        client.delete("/_emulator/requests").raise_for_status()


def batch_lines(base_url: str) -> tuple[Counter[str], Counter[str]]:
    """Across every batch on the server: how many batches each shard has (by the metadata
    tag), and how many batch lines each custom_id was sent in."""
    per_shard: Counter[str] = Counter()
    per_request: Counter[str] = Counter()
    with http(base_url) as client:
        after = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            page = client.get("/openai/v1/batches", params=params).json()
            for batch in page["data"]:
                per_shard[(batch.get("metadata") or {}).get("groqbatch_shard", "?")] += 1
                content = client.get(f"/openai/v1/files/{batch['input_file_id']}/content")
                content.raise_for_status()
                for line in content.text.splitlines():
                    if line.strip():
                        per_request[json.loads(line)["custom_id"]] += 1
            if not page.get("has_more"):
                break
            after = page["data"][-1]["id"]
    return per_shard, per_request


def ledger_figures(ledger_url: str, job: str) -> dict[str, Any]:
    with Ledger.open(ledger_url) as ledger:
        return {
            "requests": ledger.request_counts(job),
            "totals": ledger.request_totals(job),
            "shards": ledger.shards(job),
        }
