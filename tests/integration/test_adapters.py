"""Adapters against the local server (real HTTP in-process) and a real SQLite ledger: upload,
register, list, show, delete — and jobs on an adapter, by batch and by the flex fallback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs import load_job
from pipeline.adapters import (
    AdapterHome,
    delete_adapter,
    show_adapter,
    sync_adapters,
    upload_adapter,
)
from pipeline.client import GroqClient
from pipeline.emulator import Emulator, create_app
from pipeline.errors import AdapterError, ConfigError, PermanentAPIError
from pipeline.planning import plan_config, resolve_job_model
from pipeline.runner import run_job
from state import Ledger, RequestStatus
from tests.adapters import BAD_ADAPTERS, adapter_zip
from tests.conftest import API_KEY

pytestmark = pytest.mark.anyio
BASE = "llama-3.1-8b-instant"
MESSAGES = [{"role": "user", "content": "name three rivers"}]


@pytest.fixture
async def api(emulator: Emulator) -> AsyncIterator[GroqClient]:
    transport = httpx.ASGITransport(app=create_app(emulator=emulator))
    async with GroqClient("http://emulator.local", API_KEY, transport=transport) as client:
        yield client


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "ledger.sqlite") as opened:
        yield opened


@pytest.fixture
def zip_path(tmp_path: Path) -> Path:
    path = tmp_path / "adapter.zip"
    path.write_bytes(adapter_zip())
    return path


async def answer(api: GroqClient, model: str) -> str:
    reply = await api.chat({"model": model, "messages": MESSAGES})
    content: str = reply.body["choices"][0]["message"]["content"]
    return content


async def test_upload_registers_and_records(api: GroqClient, ledger: Ledger, zip_path: Path) -> None:
    report = await upload_adapter(ledger, api, zip_path, name="rivers", base_model=BASE)
    record = report.record
    assert record.live
    assert not report.adopted
    assert record.model_id is not None
    assert record.model_id.startswith(f"ft:{BASE}:")
    assert ledger.adapter_model("rivers") == record.model_id
    assert [f.purpose for f in await api.list_files()] == ["fine_tuning"]
    assert (await answer(api, record.model_id)).startswith("[LoRA rivers]")
    assert not (await answer(api, BASE)).startswith("[LoRA")


@pytest.mark.parametrize("case", ["three files", "bf16 tensors", "rank 12", "corrupt header"])
async def test_a_bad_zip_is_refused_before_upload(api: GroqClient, ledger: Ledger, tmp_path: Path,
                                                  case: str) -> None:
    path = tmp_path / "bad.zip"
    path.write_bytes(BAD_ADAPTERS[case][0])
    with pytest.raises(AdapterError):
        await upload_adapter(ledger, api, path, name="bad", base_model=BASE)
    assert await api.list_files() == []
    assert ledger.adapters(include_deleted=True) == []


async def test_the_base_model_comes_from_the_config_or_is_asked_for(
        api: GroqClient, ledger: Ledger, tmp_path: Path) -> None:
    named = tmp_path / "named.zip"
    config = {"r": 8, "lora_alpha": 16, "base_model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"}
    named.write_bytes(adapter_zip({"adapter_model.safetensors": _weights(),
                                   "adapter_config.json": json.dumps(config).encode()}))
    report = await upload_adapter(ledger, api, named, name="named")
    assert report.record.base_model == BASE
    unnamed = tmp_path / "unnamed.zip"
    unnamed.write_bytes(adapter_zip())
    with pytest.raises(ConfigError, match="which base model"):
        await upload_adapter(ledger, api, unnamed, name="unnamed")
    with pytest.raises(ConfigError, match="adapter name"):
        await upload_adapter(ledger, api, unnamed, name="no spaces", base_model=BASE)


def _weights() -> bytes:
    from tests.adapters import weights

    return weights()


async def test_taken_names_are_refused(api: GroqClient, ledger: Ledger, zip_path: Path,
                                       tmp_path: Path) -> None:
    await upload_adapter(ledger, api, zip_path, name="taken", base_model=BASE)
    with pytest.raises(ConfigError, match="registered already"):
        await upload_adapter(ledger, api, zip_path, name="taken", base_model=BASE)
    with Ledger.open(tmp_path / "other.sqlite") as other, \
            pytest.raises(ConfigError, match="the account already has an adapter named 'taken'"):
        await upload_adapter(other, api, zip_path, name="taken", base_model=BASE)
    assert len(await api.list_fine_tunings()) == 1


async def test_an_interrupted_upload_is_adopted(api: GroqClient, ledger: Ledger, zip_path: Path) -> None:
    # The intent was recorded and the registration made, but the process died before the outcome.
    uploaded = await api.upload_file(zip_path, filename="cut.zip", purpose="fine_tuning")
    ledger.record_adapter("cut", base_model=BASE, file_id=uploaded.id)
    created = await api.create_fine_tuning(input_file_id=uploaded.id, name="cut", base_model=BASE)
    report = await upload_adapter(ledger, api, zip_path, name="cut", base_model=BASE)
    assert report.adopted
    assert report.record.model_id == created["data"]["fine_tuned_model"]
    assert len(await api.list_fine_tunings()) == 1
    assert len(await api.list_files()) == 1


async def test_list_keeps_ledgers_in_step_with_the_account(
        api: GroqClient, ledger: Ledger, zip_path: Path, tmp_path: Path) -> None:
    keep = (await upload_adapter(ledger, api, zip_path, name="keep", base_model=BASE)).record
    drop = (await upload_adapter(ledger, api, zip_path, name="drop", base_model=BASE)).record
    assert drop.fine_tuning_id is not None
    await api.delete_fine_tuning(drop.fine_tuning_id)  # deleted elsewhere (the console)

    listing = await sync_adapters(ledger, api)
    assert [r.name for r in listing.adapters] == ["keep"]
    assert (listing.adopted, listing.gone) == ([], ["drop"])
    assert ledger.adapter_model("drop") is None

    with Ledger.open(tmp_path / "other-job.sqlite") as other:  # another job's ledger
        adopted = await sync_adapters(other, api)
        assert adopted.adopted == ["keep"]
        assert other.adapter_model("keep") == keep.model_id
        assert (await sync_adapters(other, api)).adopted == []  # nothing new the second time


async def test_show(api: GroqClient, ledger: Ledger, zip_path: Path) -> None:
    record = (await upload_adapter(ledger, api, zip_path, name="shown", base_model=BASE)).record
    details = await show_adapter(ledger, api, "shown")
    assert details["model_id"] == record.model_id
    assert details["remote"]["fine_tuned_model"] == record.model_id
    assert record.fine_tuning_id is not None
    await api.delete_fine_tuning(record.fine_tuning_id)
    with pytest.raises(ConfigError, match="no longer on the account"):
        await show_adapter(ledger, api, "shown")
    assert ledger.adapter_model("shown") is None
    with pytest.raises(ConfigError, match="unknown adapter 'shown'"):
        await show_adapter(ledger, api, "shown")


async def test_delete(api: GroqClient, ledger: Ledger, zip_path: Path) -> None:
    record = (await upload_adapter(ledger, api, zip_path, name="gone", base_model=BASE)).record
    report = await delete_adapter(ledger, api, "gone")
    assert (report.already_gone, report.file_deleted) == (False, True)
    assert await api.list_fine_tunings() == []
    assert await api.list_files() == []
    assert ledger.adapter_model("gone") is None
    assert record.model_id is not None
    with pytest.raises(PermanentAPIError) as caught:
        await answer(api, record.model_id)
    assert caught.value.code == "model_not_found"
    with pytest.raises(ConfigError, match="unknown adapter 'gone'"):
        await delete_adapter(ledger, api, "gone")


# -- jobs on an adapter, on the in-process server of the job's own data_dir ---------------------


def write_job(folder: Path, name: str, *, policy: str = "", local: str = "",
              user: str = "{{ text }}") -> Path:
    rows = folder / "rows.jsonl"
    if not rows.exists():
        rows.write_text("".join(json.dumps({"id": i, "text": f"question {i}"}) + "\n"
                                for i in range(10)))
    config = folder / f"{name}.toml"
    config.write_text(
        f'name = "{name}"\nbackend = "local"\nadapter = "support"\nledger = "shared.sqlite"\n'
        '[input]\npath = "rows.jsonl"\nid_column = "id"\n'
        f'[prompt]\nuser = "{user}"\nmax_completion_tokens = 32\n'
        f'[policy]\nmax_lines_per_shard = 4\npoll_interval_min_s = 0.05\npoll_interval_max_s = 0.2\n{policy}'
        f'[local]\ndata_dir = "server"\ntime_scale = 36000\n{local}'
    )
    return config


def answers(ledger: Ledger, job: str) -> list[tuple[str, str]]:
    ids = [r.custom_id for r in ledger.iter_requests(job, RequestStatus.SUCCEEDED)]
    found = []
    for result in ledger.results_for(ids):
        body: Any = json.loads(result.body or b"{}")
        found.append((result.source.value, body["choices"][0]["message"]["content"]))
    return found


async def test_jobs_on_an_adapter_by_batch_and_by_flex(tmp_path: Path, zip_path: Path) -> None:
    batch_config = write_job(tmp_path, "by-batch", local='scenario = "expire.toml"\n')
    (tmp_path / "expire.toml").write_text("[batch]\nexpire_after_fraction = 0.5\n")
    sync_config = write_job(tmp_path, "by-sync", policy='mode = "sync"\n',
                            user="again, {{ text }}")
    with pytest.raises(ConfigError, match="unknown adapter 'support'"):
        resolve_job_model(load_job(batch_config), config=batch_config)

    home = AdapterHome.from_config(batch_config)
    async with home.open() as (ledger, client):
        model = (await upload_adapter(ledger, client, zip_path, name="support", base_model=BASE)
                 ).record.model_id
    assert resolve_job_model(load_job(batch_config)) == model
    assert plan_config(batch_config).compile.model == model

    summary = await run_job(load_job(batch_config), config_path=batch_config)
    assert summary.model == model
    assert summary.finished
    assert summary.requests["succeeded"] == 10
    assert summary.fallback["sent"] > 0  # the expired batches' leftovers went to flex
    with Ledger.open(tmp_path / "shared.sqlite") as ledger:
        got = answers(ledger, "by-batch")
    assert len(got) == 10
    assert all(text.startswith("[LoRA support]") for _, text in got)
    assert {source for source, _ in got} == {"batch", "flex"}

    summary = await run_job(load_job(sync_config), config_path=sync_config)
    assert summary.requests["succeeded"] == 10
    assert summary.model == model
    with Ledger.open(tmp_path / "shared.sqlite") as ledger:
        got = answers(ledger, "by-sync")
    assert len(got) == 10
    assert all(text.startswith("[LoRA support]") for _, text in got)
    assert {source for source, _ in got} == {"flex"}

    async with home.open() as (ledger, client):
        await delete_adapter(ledger, client, "support")
    for config in (batch_config, sync_config):
        with pytest.raises(ConfigError, match="unknown adapter 'support': it was deleted"):
            resolve_job_model(load_job(config), config=config)
        with pytest.raises(ConfigError, match="unknown adapter 'support'"):
            plan_config(config)
