"""Audio jobs end to end on the local server (real HTTP on a loopback port): WAV data URLs
compiled into audio batch lines, batches run, transcripts reconciled (verbose_json kept parsed),
billed by audio seconds, exported; and what an expired batch leaves finished through the
synchronous endpoint by ``url`` — on demand, since the audio endpoints take no service tier."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobs import compile_job, load_job, load_prices, price_for
from jobs.audio import MIN_BILLED_AUDIO_S
from pipeline.emulator import Emulator, EmulatorConfig, Scenario
from pipeline.emulator.config import BatchFaults
from pipeline.emulator.serve import ThreadedServer
from pipeline.export import export_job
from pipeline.runner import run_job
from pipeline.submit import shard_file
from pipeline.workers import Worker
from state import Ledger
from tests.audio import wav_data_url
from tests.integration.lifecycle import FAST_POLICY, read_ledger

pytestmark = pytest.mark.anyio

SECONDS = [0.5, 1.25, 2.0, 3.5, 0.75]
MODEL = "whisper-large-v3-turbo"
PRICE = price_for(MODEL, load_prices())
assert PRICE is not None


def batch_server(scenario: Scenario | None = None) -> ThreadedServer:
    config = EmulatorConfig(time_scale=3600, throughput_lines_per_s=50, validation_s=1,
                            finalizing_s=1, cancelling_s=1, scenario=scenario or Scenario())
    return ThreadedServer(emulator=Emulator(config))


def write_audio_job(directory: Path, base_url: str, *, audio: dict[str, Any],
                    endpoint: str = "/v1/audio/transcriptions", model: str = MODEL,
                    fallback: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "calls.jsonl").open("w") as out:
        for i, seconds in enumerate(SECONDS):
            out.write(json.dumps({"call_id": f"c{i}", "seconds": seconds,
                                  "audio_url": wav_data_url(seconds, tone_hz=300 + 50 * i)}) + "\n")
    lines = ['name = "calls"', 'backend = "local"', f'base_url = "{base_url}"',
             f'endpoint = "{endpoint}"', f'model = "{model}"',
             "[input]", 'path = "calls.jsonl"', 'id_column = "call_id"', "[audio]",
             'url = "{{ audio_url }}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in audio.items()]
    lines += ["[policy]", "max_lines_per_shard = 2"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in FAST_POLICY.items()]
    lines += ["[policy.fallback]", f"enabled = {'true' if fallback else 'false'}",
              'triggers = ["expired", "missing", "retryable_errors"]']
    config = directory / "job.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def exported_rows(spec: Any) -> list[dict[str, Any]]:
    with Ledger.open(spec.ledger_target) as ledger:
        report = export_job(spec, ledger)
    return [json.loads(line) for line in Path(report.path).read_text().splitlines()]


def exported_csv(spec: Any, path: Path) -> list[dict[str, str]]:
    with Ledger.open(spec.ledger_target) as ledger:
        report = export_job(spec, ledger, path=path)
    with open(report.path, newline="") as handle:
        return list(csv.DictReader(handle))


def shard_urls(spec: Any) -> set[str]:
    urls = set()
    for path in (spec.workdir_path / "shards").glob("*.jsonl"):
        urls |= {orjson.loads(line)["url"] for line in path.read_bytes().splitlines()}
    return urls


async def test_a_transcription_job_runs_through_batches_and_exports(tmp_path: Path) -> None:
    with batch_server() as server:
        spec = load_job(write_audio_job(tmp_path, server.url, audio={
            "language": "en", "response_format": "verbose_json",
            "timestamp_granularities": ["segment"]}))
        summary = await run_job(spec)
        again = await run_job(spec)  # content-addressed: nothing is sent twice
    assert summary.finished
    assert summary.requests["succeeded"] == len(SECONDS)
    assert again.compile is not None
    assert again.compile["to_send"] == 0
    assert shard_urls(spec) == {"/v1/audio/transcriptions"}
    view = read_ledger(spec)
    assert len(view.shards) == 3
    assert all(s["batch_status"] == "completed" for s in view.shards)
    billed = 0.0
    for request in view.requests.values():
        assert request.status == "succeeded"
        assert (request.prompt_tokens, request.completion_tokens) == (0, 0)
        seconds = orjson.loads(view.results[request.custom_id].body or b"null")["duration"]
        billed_s = max(MIN_BILLED_AUDIO_S, -(-seconds // 1))
        assert request.cost_usd == pytest.approx(PRICE.audio_cost(billed_s, "batch"))
        billed += billed_s
    assert summary.totals["cost_usd"] == pytest.approx(PRICE.audio_cost(billed, "batch"))

    rows = exported_rows(spec)
    assert [row["duration"] for row in rows] == SECONDS  # each WAV's real length
    for row in rows:
        assert row["groqbatch_status"] == "succeeded"
        assert row["groqbatch_tier"] == "batch"
        assert row["language"] == "english"
        assert row["segments"][-1]["end"] == row["seconds"]
        assert "".join(s["text"] for s in row["segments"]).strip() == row["groqbatch_answer"]
    assert len({row["groqbatch_answer"] for row in rows}) == len(rows)


async def test_text_format_translations_export_the_text(tmp_path: Path) -> None:
    with batch_server() as server:
        spec = load_job(write_audio_job(tmp_path, server.url, endpoint="/v1/audio/translations",
                                        model="whisper-large-v3",
                                        audio={"response_format": "text", "prompt": "A call."}))
        summary = await run_job(spec)
    assert summary.requests["succeeded"] == len(SECONDS)
    assert shard_urls(spec) == {"/v1/audio/translations"}
    exported = exported_csv(spec, tmp_path / "out.csv")
    assert [row["call_id"] for row in exported] == [f"c{i}" for i in range(len(SECONDS))]
    assert all(row["groqbatch_status"] == "succeeded" for row in exported)
    assert all(row["groqbatch_answer"].endswith(".") for row in exported)
    assert len({row["groqbatch_answer"] for row in exported}) == len(SECONDS)
    assert all(row["groqbatch_parsed"] == "" for row in exported)


async def test_an_expired_audio_batch_is_finished_by_url_on_demand(tmp_path: Path) -> None:
    scenario = Scenario(batch=BatchFaults(expire_after_fraction=0.0))
    with batch_server(scenario) as server:
        spec = load_job(write_audio_job(tmp_path, server.url, fallback=True, audio={
            "response_format": "verbose_json", "timestamp_granularities": ["word"]}))
        summary = await run_job(spec)
    assert summary.finished
    assert summary.requests["succeeded"] == len(SECONDS)
    view = read_ledger(spec)
    assert all(s["batch_status"] == "expired" for s in view.shards)
    with sqlite3.connect(spec.ledger_target) as db:
        tiers = dict(db.execute("SELECT custom_id, tier FROM requests"))
    assert set(tiers.values()) == {"on_demand"}
    for request in view.requests.values():
        result = view.results[request.custom_id]
        assert str(result.source) == "flex"
        body = orjson.loads(result.body or b"null")
        assert body["words"][-1]["end"] == body["duration"]
        assert request.attempts == 2  # one in the expired batch, one synchronous
        billed_s = max(MIN_BILLED_AUDIO_S, -(-body["duration"] // 1))
        assert request.cost_usd == pytest.approx(PRICE.audio_cost(billed_s, "on_demand"))
    assert summary.fallback["succeeded"] == len(SECONDS)


def test_an_audio_shard_rebuilt_from_the_ledger_keeps_its_endpoint(tmp_path: Path,
                                                                    ledger_url: str) -> None:
    spec = load_job(write_audio_job(tmp_path, "http://127.0.0.1:9", audio={"language": "en"}))
    spec = spec.model_copy(update={"ledger": ledger_url})
    with Ledger.open(spec.ledger_target) as ledger:
        compile_job(spec, ledger)
        shards = ledger.shards(spec.name)
        originals = {s["key"]: Path(s["path"]).read_bytes() for s in shards}
        shutil.rmtree(spec.workdir_path / "shards")  # compiled "on another machine"
        for shard in shards:
            assert ledger.shard_endpoint(shard["key"]) == "/v1/audio/transcriptions"
            rebuilt = shard_file(ledger, shard, tmp_path / "elsewhere", Worker("w2"))
            assert rebuilt.read_bytes() == originals[shard["key"]]
    assert len(shards) == 3
