"""Batches API of the local server, in-process: every status path on the virtual clock, line
validation, batch faults, request_counts against the files, list paging and the id filter."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from pipeline.emulator import Emulator, EmulatorConfig, Scenario
from pipeline.emulator.batch_params import CreateParams
from pipeline.emulator.clock import VirtualClock
from pipeline.emulator.config import BatchFaults
from pipeline.emulator.files import copy_into_store
from tests.openapi import assert_response_matches, assert_valid

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000
VALIDATION_S, FINALIZING_S, CANCELLING_S, LINES_PER_S = 10, 20, 30, 10
MODEL = "llama-3.1-8b-instant"
BATCH_FIELDS = {
    "id", "object", "endpoint", "errors", "input_file_id", "completion_window", "status",
    "output_file_id", "error_file_id", "finalizing_at", "failed_at", "expired_at", "cancelled_at",
    "request_counts", "metadata", "created_at", "expires_at", "cancelling_at", "completed_at",
    "in_progress_at",
}
TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
              "cancelling_at", "cancelled_at")


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(throughput_lines_per_s=LINES_PER_S, validation_s=VALIDATION_S,
                          finalizing_s=FINALIZING_S, cancelling_s=CANCELLING_S)


@pytest.fixture
def emulator(emulator_config: EmulatorConfig) -> Iterator[Emulator]:
    """A clock that stands still at T0 unless a test moves it, so timestamps are exact."""
    emu = Emulator(emulator_config)
    emu.clock = VirtualClock(time_scale=1e-9, start=T0)
    yield emu
    emu.close()


# -- helpers ----------------------------------------------------------------------------------


def request_line(custom_id: str, **overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": f"question {custom_id}"}]},
    }
    line.update(overrides)
    return line


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


async def upload(client: httpx.AsyncClient, content: bytes, purpose: str = "batch") -> str:
    response = await client.post("/openai/v1/files", files={"file": ("in.jsonl", content)},
                                 data={"purpose": purpose})
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


async def create(client: httpx.AsyncClient, content: bytes | None = None, n: int = 20,
                 **fields: Any) -> dict[str, Any]:
    if content is None:
        content = jsonl([request_line(f"r{i}") for i in range(n)])
    body = {"input_file_id": await upload(client, content), "endpoint": "/v1/chat/completions",
            "completion_window": "24h", **fields}
    response = await client.post("/openai/v1/batches", json=body)
    assert response.status_code == 200, response.text
    assert_response_matches(response, "post", "/openai/v1/batches")
    batch: dict[str, Any] = response.json()
    return batch


async def at(client: httpx.AsyncClient, emulator: Emulator, batch_id: str, t: float, *,
             spec: bool = True) -> dict[str, Any]:
    """The batch as seen at ``T0 + t`` (moves the clock forward to there)."""
    emulator.clock.advance(T0 + t - emulator.clock.now())
    response = await client.get(f"/openai/v1/batches/{batch_id}")
    assert response.status_code == 200, response.text
    if spec:
        assert_response_matches(response, "get", "/openai/v1/batches/{batch_id}")
    batch: dict[str, Any] = response.json()
    assert set(batch) == BATCH_FIELDS
    return batch


async def content(client: httpx.AsyncClient, file_id: str | None) -> list[bytes]:
    if file_id is None:
        return []
    info = (await client.get(f"/openai/v1/files/{file_id}")).json()
    assert info["purpose"] == "batch_output"
    raw = (await client.get(f"/openai/v1/files/{file_id}/content")).content
    assert raw.endswith(b"\n")
    return raw.splitlines()


async def files_of(client: httpx.AsyncClient, batch: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    out = [orjson.loads(line) for line in await content(client, batch["output_file_id"])]
    err = [orjson.loads(line) for line in await content(client, batch["error_file_id"])]
    for line in out + err:
        assert_valid(line, "BatchRequestOutput")
    return out, err


def stamps(batch: dict[str, Any]) -> dict[str, int]:
    return {name: batch[name] for name in TIMESTAMPS if batch[name] is not None}


def counts_match(batch: dict[str, Any], out: list[Any], err: list[Any], *, unrun_failed: bool = True) -> None:
    unrun = sum(1 for line in err if line["response"] is None)
    failed = len(err) - (0 if unrun_failed else unrun)
    assert batch["request_counts"]["completed"] == len(out)
    assert batch["request_counts"]["failed"] == failed
    assert batch["request_counts"]["total"] == len(out) + len(err)


def set_scenario(emulator: Emulator, **batch_faults: Any) -> None:
    emulator.faults.replace(Scenario(batch=BatchFaults(**batch_faults)), started_at=emulator.clock.now())


# -- create, retrieve, the happy path ---------------------------------------------------------


async def test_create_returns_a_validating_batch_in_groqs_shape(client: httpx.AsyncClient) -> None:
    batch = await create(client, metadata={"job": "nightly"}, completion_window="7d")
    assert set(batch) == BATCH_FIELDS
    assert batch["id"].startswith("batch_")
    assert len(batch["id"]) == len("batch_") + 26
    assert batch["object"] == "batch"
    assert batch["status"] == "validating"
    assert batch["created_at"] == T0
    assert batch["expires_at"] == T0 + 7 * 86400
    assert batch["metadata"] == {"job": "nightly"}
    assert batch["completion_window"] == "7d"
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert stamps(batch) == {}
    assert batch["errors"] is None
    assert batch["output_file_id"] is None
    assert batch["error_file_id"] is None


async def test_completed_path_steps_through_every_status(client: httpx.AsyncClient,
                                                         emulator: Emulator) -> None:
    batch = await create(client)  # 20 lines at 10 lines/s: in progress for 2 s
    bid = batch["id"]
    assert (await at(client, emulator, bid, 9))["status"] == "validating"
    running = await at(client, emulator, bid, 10)
    assert running["status"] == "in_progress"
    assert stamps(running) == {"in_progress_at": T0 + 10}
    assert running["request_counts"] == {"total": 20, "completed": 0, "failed": 0}
    halfway = await at(client, emulator, bid, 11)
    assert halfway["request_counts"] == {"total": 20, "completed": 10, "failed": 0}
    finalizing = await at(client, emulator, bid, 12)
    assert finalizing["status"] == "finalizing"
    assert stamps(finalizing) == {"in_progress_at": T0 + 10, "finalizing_at": T0 + 12}
    assert finalizing["output_file_id"] is None
    assert (await at(client, emulator, bid, 31))["status"] == "finalizing"
    done = await at(client, emulator, bid, 32)
    assert done["status"] == "completed"
    assert stamps(done) == {"in_progress_at": T0 + 10, "finalizing_at": T0 + 12,
                            "completed_at": T0 + 32}
    assert done["error_file_id"] is None
    assert done["errors"] is None
    out, err = await files_of(client, done)
    assert err == []
    counts_match(done, out, err)
    assert sorted(line["custom_id"] for line in out) == sorted(f"r{i}" for i in range(20))
    for line in out:
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200
        assert response["request_id"].startswith("req_")
        assert response["body"]["object"] == "chat.completion"
        # Each answer is to its own question.
        assert f"question {line['custom_id']}" in response["body"]["choices"][0]["message"]["content"]


async def test_a_late_first_poll_sees_the_times_things_happened(client: httpx.AsyncClient,
                                                                 emulator: Emulator) -> None:
    batch = await create(client)
    done = await at(client, emulator, batch["id"], 5000)
    assert done["status"] == "completed"
    assert stamps(done) == {"in_progress_at": T0 + 10, "finalizing_at": T0 + 12,
                            "completed_at": T0 + 32}


async def test_concurrent_polls_settle_a_batch_once(client: httpx.AsyncClient, emulator: Emulator) -> None:
    batch = await create(client, n=200)
    emulator.clock.advance(1000)
    files_before = len(emulator.files.all())
    answers = await asyncio.gather(*(client.get(f"/openai/v1/batches/{batch['id']}") for _ in range(20)))
    assert {r.json()["output_file_id"] for r in answers} != {None}
    assert len({r.json()["output_file_id"] for r in answers}) == 1
    assert len(emulator.files.all()) == files_before + 1
    out, _ = await files_of(client, answers[0].json())
    assert len(out) == 200


async def test_the_input_file_may_be_deleted_once_the_batch_exists(client: httpx.AsyncClient,
                                                                   emulator: Emulator) -> None:
    batch = await create(client)
    assert (await client.delete(f"/openai/v1/files/{batch['input_file_id']}")).status_code == 200
    done = await at(client, emulator, batch["id"], 100)
    assert done["status"] == "completed"
    assert done["request_counts"]["completed"] == 20


# -- expiry -------------------------------------------------------------------------------------


async def test_expires_at_the_end_of_its_window_with_partial_output(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.config = emulator.config.model_copy(update={"throughput_lines_per_s": 1e-4})
    batch = await create(client)  # 20 lines would take 200,000 s; the window is 86,400 s
    still = await at(client, emulator, batch["id"], 86_399)
    assert still["status"] == "in_progress"
    expired = await at(client, emulator, batch["id"], 90_000)
    assert expired["status"] == "expired"
    assert stamps(expired) == {"in_progress_at": T0 + 10, "expired_at": T0 + 86_400}
    out, err = await files_of(client, expired)
    assert len(out) == 8  # floor((86,400 - 10) * 1e-4)
    assert all(line["error"]["code"] == "batch_expired" and line["response"] is None for line in err)
    assert {line["custom_id"] for line in out} | {line["custom_id"] for line in err} == {
        f"r{i}" for i in range(20)
    }
    counts_match(expired, out, err)


@pytest.mark.parametrize(("fraction", "ran"), [(0.0, 0), (0.25, 5), (0.5, 10), (0.33, 7), (1.0, 20)])
async def test_expire_after_fraction_keeps_the_lines_that_ran(
    client: httpx.AsyncClient, emulator: Emulator, fraction: float, ran: int
) -> None:
    put = await client.put("/_emulator/scenario", json={"batch": {"expire_after_fraction": fraction}})
    assert put.status_code == 200
    batch = await create(client)
    expired = await at(client, emulator, batch["id"], 1000)
    assert expired["status"] == "expired"
    assert stamps(expired) == {"in_progress_at": T0 + 10, "expired_at": T0 + 10 + ran // LINES_PER_S}
    out, err = await files_of(client, expired)
    assert len(out) == ran
    assert len(err) == 20 - ran
    assert (expired["output_file_id"] is None) == (ran == 0)
    assert (expired["error_file_id"] is None) == (ran == 20)
    expected_message = "This request could not be executed before the completion window expired."
    assert all(line["error"] == {"code": "batch_expired", "message": expected_message} for line in err)
    counts_match(expired, out, err)


async def test_unrun_lines_need_not_count_as_failed(client: httpx.AsyncClient, emulator: Emulator) -> None:
    emulator.config = emulator.config.model_copy(update={"count_unrun_as_failed": False})
    set_scenario(emulator, expire_after_fraction=0.5)
    batch = await create(client)
    expired = await at(client, emulator, batch["id"], 1000)
    assert expired["request_counts"] == {"total": 20, "completed": 10, "failed": 0}
    out, err = await files_of(client, expired)
    counts_match(expired, out, err, unrun_failed=False)


# -- cancel -------------------------------------------------------------------------------------


async def test_cancel_in_progress_keeps_partial_output(client: httpx.AsyncClient, emulator: Emulator) -> None:
    batch = await create(client)
    bid = batch["id"]
    await at(client, emulator, bid, 11)  # 10 of 20 lines ran
    cancel = await client.post(f"/openai/v1/batches/{bid}/cancel",
                               headers={"content-type": "application/json"})
    assert cancel.status_code == 200, cancel.text
    assert_response_matches(cancel, "post", "/openai/v1/batches/{batch_id}/cancel")
    cancelling = cancel.json()
    assert cancelling["status"] == "cancelling"
    assert stamps(cancelling) == {"in_progress_at": T0 + 10, "cancelling_at": T0 + 11}
    assert cancelling["request_counts"] == {"total": 20, "completed": 10, "failed": 0}
    again = await client.post(f"/openai/v1/batches/{bid}/cancel")
    assert again.status_code == 200
    assert again.json()["status"] == "cancelling"
    assert (await at(client, emulator, bid, 40))["status"] == "cancelling"
    cancelled = await at(client, emulator, bid, 41)
    assert cancelled["status"] == "cancelled"
    assert stamps(cancelled) == {"in_progress_at": T0 + 10, "cancelling_at": T0 + 11,
                                 "cancelled_at": T0 + 41}
    out, err = await files_of(client, cancelled)
    assert len(out) == 10
    assert len(err) == 10
    assert all(line["error"]["code"] == "batch_cancelled" for line in err)
    counts_match(cancelled, out, err)
    settled = await client.post(f"/openai/v1/batches/{bid}/cancel")
    assert settled.status_code == 400
    assert settled.json()["error"]["code"] == "batch_not_cancellable"


async def test_cancel_while_validating_runs_nothing(client: httpx.AsyncClient, emulator: Emulator) -> None:
    batch = await create(client)
    cancelling = (await client.post(f"/openai/v1/batches/{batch['id']}/cancel")).json()
    assert cancelling["status"] == "cancelling"
    assert stamps(cancelling) == {"cancelling_at": T0}
    cancelled = await at(client, emulator, batch["id"], CANCELLING_S)
    assert stamps(cancelled) == {"cancelling_at": T0, "cancelled_at": T0 + CANCELLING_S}
    out, err = await files_of(client, cancelled)
    assert out == []
    assert cancelled["output_file_id"] is None
    assert len(err) == 20
    counts_match(cancelled, out, err)


async def test_cancel_of_a_completed_batch_is_a_clear_400(client: httpx.AsyncClient,
                                                          emulator: Emulator) -> None:
    batch = await create(client)
    await at(client, emulator, batch["id"], 100)
    response = await client.post(f"/v1/batches/{batch['id']}/cancel")
    assert response.status_code == 400
    assert "status is `completed`" in response.json()["error"]["message"]


# -- validation ---------------------------------------------------------------------------------


async def test_each_line_problem_is_reported_with_its_line(client: httpx.AsyncClient,
                                                           emulator: Emulator) -> None:
    good = request_line("ok-1")
    lines = [
        orjson.dumps(good),
        b'{"custom_id": "broken", "method": ',
        orjson.dumps({k: v for k, v in request_line("x").items() if k != "custom_id"}),
        orjson.dumps({k: v for k, v in request_line("no-method").items() if k != "method"}),
        orjson.dumps({k: v for k, v in request_line("no-url").items() if k != "url"}),
        orjson.dumps({k: v for k, v in request_line("no-body").items() if k != "body"}),
        orjson.dumps(request_line("ok-1")),
        orjson.dumps(request_line("get", method="GET")),
        orjson.dumps(request_line("embed", url="/v1/embeddings")),
        orjson.dumps(request_line("nomodel", body={"model": "no-such-model", "messages": []})),
        b"",
        orjson.dumps(request_line("ok-2")),
    ]
    batch = await create(client, b"\n".join(lines) + b"\n")
    done = await at(client, emulator, batch["id"], 100)
    assert done["status"] == "completed"
    found = [(e["code"], e["param"], e["line"]) for e in done["errors"]["data"]]
    assert found == [
        ("invalid_json_line", None, 2),
        ("missing_required_parameter", "custom_id", 3),
        ("missing_required_parameter", "method", 4),
        ("missing_required_parameter", "url", 5),
        ("missing_required_parameter", "body", 6),
        ("duplicate_custom_id", "custom_id", 7),
        ("invalid_method", "method", 8),
        ("invalid_url", "url", 9),
        ("model_not_found", "body.model", 10),
    ]
    assert done["errors"]["data"][6]["message"] == "Invalid value: 'GET'. Supported values are: 'POST'"
    assert done["request_counts"] == {"total": 11, "completed": 2, "failed": 9}
    out, err = await files_of(client, done)
    counts_match(done, out, err)
    assert sorted(line["custom_id"] for line in out) == ["ok-1", "ok-2"]
    statuses = {line["custom_id"]: line["response"]["status_code"] for line in err if line["custom_id"]}
    assert statuses["nomodel"] == 404
    assert statuses["get"] == 400
    assert all(line["response"]["body"]["error"]["type"] == "invalid_request_error" for line in err)


async def test_a_line_the_chat_endpoint_rejects_goes_to_the_error_file(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    lines = [request_line("ok"), request_line("empty", body={"model": MODEL, "messages": []})]
    done = await at(client, emulator, (await create(client, jsonl(lines)))["id"], 100)
    assert done["status"] == "completed"
    assert done["errors"] is None  # valid as a batch line; the chat endpoint said no
    out, err = await files_of(client, done)
    assert [line["custom_id"] for line in err] == ["empty"]
    assert err[0]["error"] is None
    assert err[0]["response"]["status_code"] == 400
    assert err[0]["response"]["body"]["error"]["param"] == "messages"
    counts_match(done, out, err)


async def test_a_file_with_no_valid_line_fails_validation(client: httpx.AsyncClient,
                                                          emulator: Emulator) -> None:
    lines = [request_line("a", method="GET"), request_line("b", url="/v1/x")]
    batch = await create(client, jsonl(lines))
    failed = await at(client, emulator, batch["id"], 100)
    assert failed["status"] == "failed"
    assert stamps(failed) == {"failed_at": T0 + VALIDATION_S}
    assert [(e["code"], e["line"]) for e in failed["errors"]["data"]] == [
        ("invalid_method", 1), ("invalid_url", 2)]
    assert failed["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert failed["output_file_id"] is None
    assert failed["error_file_id"] is None


async def test_fail_validation_fault_fails_a_good_file(client: httpx.AsyncClient, emulator: Emulator) -> None:
    set_scenario(emulator, fail_validation=True)
    batch = await create(client)
    failed = await at(client, emulator, batch["id"], 100)
    assert failed["status"] == "failed"
    assert failed["failed_at"] == T0 + VALIDATION_S
    assert failed["errors"]["data"][0]["param"] == "input_file_id"
    assert failed["in_progress_at"] is None


# -- faults -------------------------------------------------------------------------------------


async def test_duplicate_missing_and_garbled_lines(client: httpx.AsyncClient, emulator: Emulator) -> None:
    rate = 0.3
    set_scenario(emulator, duplicate_line_rate=rate, missing_line_rate=rate, garbled_line_rate=rate)
    ids = [f"r{i}" for i in range(40)]
    chance = emulator.faults.chance
    missing = {c for c in ids if chance("batch:missing", rate, c)}
    garbled = {c for c in ids if chance("batch:garbled", rate, c)} - missing
    duplicated = {c for c in ids if chance("batch:duplicate", rate, c)} - missing
    assert missing
    assert garbled
    assert duplicated
    batch = await create(client, n=40)
    done = await at(client, emulator, batch["id"], 100)
    assert done["request_counts"] == {"total": 40, "completed": 40, "failed": 0}  # what ran
    raw = await content(client, done["output_file_id"])
    parsed: list[str] = []
    broken = 0
    for line in raw:
        try:
            parsed.append(orjson.loads(line)["custom_id"])
        except orjson.JSONDecodeError:
            broken += 1
    assert broken == sum(2 if c in duplicated else 1 for c in garbled)
    intact = set(ids) - missing - garbled
    assert sorted(parsed) == sorted([*intact, *(intact & duplicated)])


async def test_line_errors_and_an_empty_error_file_object(client: httpx.AsyncClient,
                                                          emulator: Emulator) -> None:
    set_scenario(emulator, line_error_rate=0.25, line_error_status=503)
    batch = await create(client)
    done = await at(client, emulator, batch["id"], 100)
    out, err = await files_of(client, done)
    expected = {f"r{i}" for i in range(20) if emulator.faults.chance("batch:line_error", 0.25, f"r{i}")}
    assert expected
    assert {line["custom_id"] for line in err} == expected
    for line in err:
        assert line["error"] is None
        assert line["response"]["status_code"] == 503
        assert line["response"]["body"]["error"]["type"] == "service_unavailable"
    counts_match(done, out, err)

    set_scenario(emulator, empty_error_file_object=True)
    clean = await create(client)
    finished = await at(client, emulator, clean["id"], 200, spec=False)  # Groq's quirk breaks the spec
    assert finished["status"] == "completed"
    assert finished["error_file_id"] == {}


async def test_a_resubmitted_faulted_line_gets_a_fresh_decision(client: httpx.AsyncClient,
                                                                 emulator: Emulator) -> None:
    set_scenario(emulator, line_error_rate=0.5)
    first = await create(client)
    _, err = await files_of(client, await at(client, emulator, first["id"], 100))
    failed = sorted(line["custom_id"] for line in err)
    retry = await create(client, jsonl([request_line(c) for c in failed]))
    _, err2 = await files_of(client, await at(client, emulator, retry["id"], 200))
    again = {c for c in failed if emulator.faults.chance("batch:line_error", 0.5, f"{c}#2")}
    assert {line["custom_id"] for line in err2} == again != set(failed)


# -- list ---------------------------------------------------------------------------------------


async def test_cursor_paging_covers_every_batch_once(client: httpx.AsyncClient) -> None:
    made = [(await create(client, n=1))["id"] for _ in range(7)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/openai/v1/batches", params=params)
        assert_response_matches(response, "get", "/openai/v1/batches")
        page = response.json()
        seen += [b["id"] for b in page["data"]]
        cursor = page["paging"]["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]


async def test_after_and_limit_paging_terminates(client: httpx.AsyncClient) -> None:
    made = [(await create(client, n=1))["id"] for _ in range(5)]
    seen: list[str] = []
    params: dict[str, str] = {"limit": "2"}
    for _ in range(10):
        page = (await client.get("/v1/batches", params=params)).json()
        seen += [b["id"] for b in page["data"]]
        assert page["first_id"] == page["data"][0]["id"]
        assert page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            break
        params["after"] = page["last_id"]
    assert seen == made[::-1]
    everything = (await client.get("/v1/batches")).json()
    assert [b["id"] for b in everything["data"]] == made[::-1]
    assert everything["has_more"] is False
    assert everything["paging"] == {"next_cursor": None}
    past_end = (await client.get("/v1/batches", params={"after": made[0]})).json()
    assert past_end["data"] == []
    assert past_end["has_more"] is False
    assert past_end["last_id"] is None


@pytest.mark.parametrize("encoding", ["repeated", "comma", "brackets"])
async def test_id_filter_in_every_encoding(client: httpx.AsyncClient, encoding: str) -> None:
    made = [(await create(client, n=1))["id"] for _ in range(4)]
    wanted = [made[0], made[2], "batch_01unknown0000000000000000"]
    query = {
        "repeated": "&".join(f"id={i}" for i in wanted),
        "comma": "id=" + ",".join(wanted),
        "brackets": "&".join(f"id%5B%5D={i}" for i in wanted),
    }[encoding]
    page = (await client.get(f"/openai/v1/batches?{query}")).json()
    assert [b["id"] for b in page["data"]] == [made[2], made[0]]
    assert page["has_more"] is False


async def test_list_and_admin_state_advance_the_batches(client: httpx.AsyncClient,
                                                        emulator: Emulator) -> None:
    batch = await create(client)
    emulator.clock.advance(100)
    state = (await client.get("/_emulator/state")).json()
    assert state["batches"] == {"completed": 1}
    listed = (await client.get("/openai/v1/batches")).json()["data"]
    assert listed[0]["id"] == batch["id"]
    assert listed[0]["status"] == "completed"


# -- bad requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"completion_window": "12h"}, 400, "completion_window"),
        ({"completion_window": "8d"}, 400, "completion_window"),
        ({"completion_window": "24x"}, 400, "completion_window"),
        ({"completion_window": 24}, 400, "completion_window"),
        ({"completion_window": None}, 400, "completion_window"),
        ({"endpoint": "/v1/embeddings"}, 400, "endpoint"),
        ({"endpoint": "/v1/audio/speech"}, 400, "endpoint"),
        ({"input_file_id": "file_01doesnotexist000000000000"}, 404, "input_file_id"),
        ({"input_file_id": None}, 400, "input_file_id"),
        ({"metadata": {"k": 1}}, 400, "metadata"),
        ({"metadata": ["k"]}, 400, "metadata"),
    ],
)
async def test_bad_create_requests(client: httpx.AsyncClient, change: dict[str, Any], status: int,
                                   param: str) -> None:
    body = {"input_file_id": await upload(client, jsonl([request_line("a")])),
            "endpoint": "/v1/chat/completions", "completion_window": "24h", **change}
    response = await client.post("/openai/v1/batches", json=body)
    assert response.status_code == status, response.text
    assert_response_matches(response, "post", "/openai/v1/batches")
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("window", ["24h", "1d", "36h", "168h", "7d"])
async def test_windows_from_24h_to_7d_are_accepted(client: httpx.AsyncClient, window: str) -> None:
    batch = await create(client, completion_window=window)
    hours = int(window[:-1]) * (24 if window.endswith("d") else 1)
    assert batch["expires_at"] - batch["created_at"] == hours * 3600


async def test_other_bad_requests_are_clear_4xx(client: httpx.AsyncClient, emulator: Emulator) -> None:
    batch = await create(client, n=1)
    await at(client, emulator, batch["id"], 100)
    output_file = (await client.get(f"/openai/v1/batches/{batch['id']}")).json()["output_file_id"]
    wrong_purpose = await client.post("/openai/v1/batches", json={
        "input_file_id": output_file, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    checks: list[tuple[httpx.Response, int]] = [
        (wrong_purpose, 400),
        (await client.post("/openai/v1/batches", content=b"not json",
                           headers={"content-type": "application/json"}), 400),
        (await client.post("/openai/v1/batches", content=b"[1]"), 400),
        (await client.get("/openai/v1/batches/batch_01nosuchbatch0000000000000"), 404),
        (await client.post("/openai/v1/batches/batch_01nosuchbatch0000000000000/cancel"), 404),
        (await client.get("/openai/v1/batches", params={"limit": "0"}), 400),
        (await client.get("/openai/v1/batches", params={"limit": "101"}), 400),
        (await client.get("/openai/v1/batches", params={"limit": "many"}), 400),
        (await client.get("/openai/v1/batches", params={"cursor": "cursor_!!!"}), 400),
        (await client.get("/openai/v1/batches", params={"after": "batch_01nosuchbatch0000000000000"}), 400),
        (await client.get("/openai/v1/batches", params=[("id", f"batch_{i}") for i in range(201)]), 400),
    ]
    for response, status in checks:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert isinstance(error["message"], str)
        assert error["type"] == "invalid_request_error"


@pytest.mark.slow
def test_a_50000_line_batch_streams_through_flat_memory(emulator: Emulator) -> None:
    """Settling a 50,000-line batch never holds its lines as Python objects all at once."""
    source = emulator.scratch_dir / "big.jsonl"
    with source.open("wb") as out:
        for i in range(50_000):
            out.write(orjson.dumps(request_line(f"r{i}")) + b"\n")
    stored = copy_into_store(emulator.files, source, filename="big.jsonl", purpose="batch", created_at=T0)
    params = CreateParams(stored.id, "/v1/chat/completions", "24h", 86_400, None)
    record = emulator.batches.get(emulator.batches.create(stored, params)["id"])
    assert record is not None
    tracemalloc.start()
    try:
        emulator.clock.advance(VALIDATION_S + 50_000 / LINES_PER_S + FINALIZING_S)
        done = emulator.batches.snapshot(record)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done["request_counts"] == {"total": 50_000, "completed": 50_000, "failed": 0}
    output = emulator.files.get(done["output_file_id"])
    assert output is not None
    assert output.lines == 50_000
    assert peak < stored.bytes  # the input alone is ~9 MB; its lines as objects would be far more
