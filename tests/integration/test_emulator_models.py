"""Models and fine-tuning objects against Groq's OpenAPI spec, and the admin endpoints."""

from __future__ import annotations

import httpx
import pytest

from pipeline.emulator import Emulator
from tests.adapters import adapter_zip
from tests.openapi import assert_response_matches

pytestmark = pytest.mark.anyio


async def test_models_list_and_retrieve_match_the_spec(client: httpx.AsyncClient) -> None:
    listed = await client.get("/openai/v1/models")
    assert_response_matches(listed, "get", "/openai/v1/models")
    ids = [m["id"] for m in listed.json()["data"]]
    assert "llama-3.1-8b-instant" in ids
    for model_id in ids:
        one = await client.get(f"/openai/v1/models/{model_id}")
        assert_response_matches(one, "get", "/openai/v1/models/{model}")
        assert one.json()["context_window"] > 0
    assert (await client.get("/v1/models")).json() == listed.json(), "OpenAI's paths serve the same"


async def test_unknown_model_is_a_404_error_body(client: httpx.AsyncClient) -> None:
    response = await client.get("/openai/v1/models/no-such-model")
    assert response.status_code == 404
    assert_response_matches(response, "get", "/openai/v1/models/{model}")
    assert response.json()["error"]["code"] == "model_not_found"


async def test_fine_tuning_get_and_delete_match_the_spec(client: httpx.AsyncClient) -> None:
    upload = await client.post("/openai/v1/files", files={"file": ("a.zip", adapter_zip())},
                               data={"purpose": "fine_tuning"})
    created = await client.post("/v1/fine_tunings", json={
        "input_file_id": upload.json()["id"], "name": "spec-check", "type": "lora",
        "base_model": "llama-3.1-8b-instant"})
    ft_id = created.json()["id"]
    got = await client.get(f"/v1/fine_tunings/{ft_id}")
    assert_response_matches(got, "get", "/v1/fine_tunings/{id}")
    deleted = await client.delete(f"/v1/fine_tunings/{ft_id}")
    assert_response_matches(deleted, "delete", "/v1/fine_tunings/{id}")
    missing = await client.get(f"/v1/fine_tunings/{ft_id}")
    assert missing.status_code == 404
    assert_response_matches(missing, "get", "/v1/fine_tunings/{id}")


async def test_admin_scenario_clock_and_state(client: httpx.AsyncClient, emulator: Emulator) -> None:
    before = emulator.clock.now()
    advanced = await client.post("/_emulator/clock/advance", json={"seconds": 86_400})
    assert advanced.json()["now"] >= before + 86_400
    bad = await client.post("/_emulator/clock/advance", json={"seconds": -1})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "seconds"
    put = await client.put("/_emulator/scenario", json={"seed": 3, "batch": {"missing_line_rate": 0.5}})
    assert put.status_code == 200
    assert emulator.faults.scenario.batch.missing_line_rate == 0.5
    typo = await client.put("/_emulator/scenario", json={"batch": {"missing_lines": 0.5}})
    assert typo.status_code == 400
    assert "batch.missing_lines" in typo.json()["error"]["message"]
    state = (await client.get("/_emulator/state")).json()
    assert state["scenario"]["seed"] == 3
    assert state["batches"] == {}
