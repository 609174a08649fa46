"""``groqbatch serve --selftest``: start the server on a loopback port, drive one small batch
(upload, create, poll, download) and one chat call through it over real HTTP, and say what
happened. Proves a fresh install works end to end with no network and no API key."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import orjson

from .config import EmulatorConfig
from .serve import ThreadedServer

SETTLED = frozenset({"completed", "failed", "expired", "cancelled"})
QUESTIONS = ("What is a batch API?", "Name three prime numbers.", "Translate 'bonjour'.")


@dataclass
class SelftestReport:
    steps: list[str] = field(default_factory=list)
    ok: bool = False


def run_selftest(config: EmulatorConfig, *, say: Callable[[str], None] = print,
                 timeout_s: float = 60.0) -> SelftestReport:
    report = SelftestReport()

    def step(text: str) -> None:
        report.steps.append(text)
        say(text)

    with ThreadedServer(config) as server:
        step(f"server listening on {server.url} (time scale {config.time_scale:g}x)")
        headers = {"Authorization": f"Bearer {config.api_key}"}
        with httpx.Client(base_url=server.url + "/openai/v1", headers=headers, timeout=30) as http:
            lines = [
                {
                    "custom_id": f"selftest-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "llama-3.1-8b-instant",
                        "messages": [{"role": "user", "content": question}],
                    },
                }
                for i, question in enumerate(QUESTIONS)
            ]
            payload = b"".join(orjson.dumps(line) + b"\n" for line in lines)
            upload = http.post(
                "/files",
                files={"file": ("selftest.jsonl", payload, "application/jsonl")},
                data={"purpose": "batch"},
            ).raise_for_status().json()
            step(f"uploaded {upload['filename']} as {upload['id']} ({upload['bytes']} bytes)")
            batch = http.post(
                "/batches",
                json={
                    "input_file_id": upload["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                    "metadata": {"groqbatch_job": "selftest"},
                },
            ).raise_for_status().json()
            step(f"created {batch['id']} (status {batch['status']}, window 24h)")
            deadline = time.monotonic() + timeout_s
            seen = batch["status"]
            while batch["status"] not in SETTLED:
                if time.monotonic() > deadline:
                    step(f"batch still {batch['status']} after {timeout_s:g}s")
                    return report
                time.sleep(0.1)
                batch = http.get(f"/batches/{batch['id']}").raise_for_status().json()
                if batch["status"] != seen:
                    seen = batch["status"]
                    step(f"  … {seen}  request_counts={batch['request_counts']}")
            if batch["status"] != "completed":
                step(f"batch ended {batch['status']}: {batch.get('errors')}")
                return report
            content = http.get(f"/files/{batch['output_file_id']}/content").raise_for_status()
            answers: dict[str, str] = {}
            for raw in content.content.splitlines():
                line = orjson.loads(raw)
                answers[line["custom_id"]] = line["response"]["body"]["choices"][0]["message"]["content"]
            matched = sorted(answers) == [f"selftest-{i}" for i in range(len(QUESTIONS))]
            step(f"downloaded {batch['output_file_id']}: {len(answers)} answers, "
                 f"every custom_id matched: {matched}")
            chat = http.post(
                "/chat/completions",
                json={
                    "model": "llama-3.1-8b-instant",
                    "messages": [{"role": "user", "content": "Say hello to groqbatch."}],
                    "service_tier": "flex",
                },
            ).raise_for_status()
            body = chat.json()
            step(
                f"chat (service_tier=flex): {body['choices'][0]['message']['content'][:60]!r} "
                f"[{body['usage']['total_tokens']} tokens, "
                f"x-ratelimit-remaining-requests={chat.headers.get('x-ratelimit-remaining-requests')}]"
            )
            report.ok = matched and len(set(answers.values())) == len(lines)
    step("selftest " + ("passed" if report.ok else "FAILED"))
    return report
