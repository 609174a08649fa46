"""The fault proxy the fault-table tests put in front of the local server (tests/faultproxy.py):
it passes calls through unchanged, answers in the server's place, rewrites answers, and serves
under a gateway's path prefix."""

from __future__ import annotations

from typing import Any

import httpx

from pipeline.emulator import Emulator, EmulatorConfig
from pipeline.emulator.serve import ThreadedServer
from tests.conftest import API_KEY
from tests.faultproxy import Call, Canned, Fault, FaultProxy, json_rewrite

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_passes_through_and_records_calls(emulator: Emulator) -> None:
    with ThreadedServer(emulator=emulator) as server, FaultProxy(server.url) as proxy:
        answer = httpx.get(proxy.url + "/openai/v1/models", headers=AUTH, timeout=10)
        direct = httpx.get(server.url + "/openai/v1/models", headers=AUTH, timeout=10)
    assert answer.status_code == 200
    assert answer.json() == direct.json()
    assert [(c.method, c.path) for c in proxy.calls] == [("GET", "/openai/v1/models")]
    assert proxy.faulted == 0


def test_answers_in_the_servers_place(emulator: Emulator) -> None:
    page = Fault(respond=lambda call: Canned(200, b"<html>sign in</html>", "text/html"))
    with ThreadedServer(emulator=emulator) as server, FaultProxy(server.url, page) as proxy:
        answer = httpx.get(proxy.url + "/openai/v1/models", headers=AUTH, timeout=10)
        journal = httpx.get(server.url + "/_emulator/requests", headers=AUTH, timeout=10).json()
    assert (answer.status_code, answer.headers["content-type"]) == (200, "text/html")
    assert answer.text == "<html>sign in</html>"
    assert proxy.faulted == 1
    assert [e["path"] for e in journal["data"]] == []  # the server never saw it


def test_rewrites_json_answers(emulator: Emulator) -> None:
    def drop_data(call: Call, value: Any) -> Any:
        return {**value, "data": None} if call.path.endswith("/models") else None

    with ThreadedServer(emulator=emulator) as server, \
            FaultProxy(server.url, Fault(rewrite=json_rewrite(drop_data))) as proxy:
        models = httpx.get(proxy.url + "/openai/v1/models", headers=AUTH, timeout=10)
        health = httpx.get(proxy.url + "/healthz", timeout=10)
    assert models.status_code == 200
    assert models.json()["data"] is None
    assert proxy.faulted == 1
    assert health.status_code == 200


def test_gateway_prefix(emulator_config: EmulatorConfig) -> None:
    with ThreadedServer(emulator_config) as server, \
            FaultProxy(server.url, Fault(path_prefix="/groq")) as proxy:
        assert proxy.url.endswith("/groq")
        inside = httpx.get(proxy.url + "/openai/v1/models", headers=AUTH, timeout=10)
        outside = httpx.get(proxy.url.removesuffix("/groq") + "/openai/v1/models", headers=AUTH,
                            timeout=10)
    assert inside.status_code == 200
    assert outside.status_code == 404
    assert [c.path for c in proxy.calls] == ["/openai/v1/models"]
