"""Files API of the local server, in-process: upload, list, retrieve, content, delete, limits."""

from __future__ import annotations

import httpx
import pytest

from pipeline.emulator import Emulator, EmulatorConfig
from tests.openapi import assert_response_matches

pytestmark = pytest.mark.anyio

LINES = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}\n' * 3


async def upload(client: httpx.AsyncClient, content: bytes = LINES, purpose: str = "batch",
                 content_type: str = "application/octet-stream") -> httpx.Response:
    return await client.post(
        "/openai/v1/files", files={"file": ("in.jsonl", content, content_type)}, data={"purpose": purpose}
    )


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/jsonl", "text/plain"])
async def test_upload_accepts_any_part_type_and_matches_the_spec(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await upload(client, content_type=content_type)
    assert response.status_code == 200
    assert_response_matches(response, "post", "/openai/v1/files")
    body = response.json()
    assert body["bytes"] == len(LINES)
    assert body["filename"] == "in.jsonl"
    assert body["id"].startswith("file_")
    assert len(body["id"]) == len("file_") + 26


async def test_content_is_streamed_back_byte_for_byte(client: httpx.AsyncClient) -> None:
    file_id = (await upload(client)).json()["id"]
    response = await client.get(f"/openai/v1/files/{file_id}/content")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == LINES


async def test_retrieve_list_delete(client: httpx.AsyncClient) -> None:
    ids = [(await upload(client)).json()["id"] for _ in range(3)]
    retrieved = await client.get(f"/openai/v1/files/{ids[0]}")
    assert_response_matches(retrieved, "get", "/openai/v1/files/{file_id}")
    listed = await client.get("/openai/v1/files")
    assert_response_matches(listed, "get", "/openai/v1/files")
    assert [f["id"] for f in listed.json()["data"]] == ids[::-1]
    assert listed.json()["has_more"] is False
    deleted = await client.delete(f"/openai/v1/files/{ids[1]}")
    assert_response_matches(deleted, "delete", "/openai/v1/files/{file_id}")
    assert deleted.json() == {"id": ids[1], "object": "file", "deleted": True}
    assert (await client.get(f"/openai/v1/files/{ids[1]}")).status_code == 404


async def test_openai_style_paging_terminates(client: httpx.AsyncClient) -> None:
    ids = [(await upload(client)).json()["id"] for _ in range(5)]
    seen: list[str] = []
    after = None
    for _ in range(10):
        params = {"limit": "2", **({"after": after} if after else {})}
        page = (await client.get("/v1/files", params=params)).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids[::-1]


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(max_file_lines=3, max_file_bytes=1000)


async def test_limits_give_clear_4xx(client: httpx.AsyncClient, emulator: Emulator) -> None:
    too_many = await upload(client, LINES + LINES[: len(LINES) // 3])
    assert too_many.status_code == 400
    assert too_many.json()["error"]["code"] == "too_many_lines"
    assert "limit is 3" in too_many.json()["error"]["message"]
    too_big = await upload(client, b"x" * 1001)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "file_too_large"
    assert emulator.files.all() == [], "a refused upload leaves nothing behind"
    # A LoRA zip is not a batch file: the line limit does not apply to it.
    assert (await upload(client, b"\n" * 10, purpose="fine_tuning")).status_code == 200


BAD_UPLOADS = [
    pytest.param({"files": {"other": ("x", b"1")}, "data": {"purpose": "batch"}}, 400, "file",
                 id="no file part"),
    pytest.param({"files": {"file": ("a.jsonl", LINES)}}, 400, "purpose", id="no purpose"),
    pytest.param({"files": {"file": ("a.jsonl", LINES)}, "data": {"purpose": "assistants"}}, 400,
                 "purpose", id="unknown purpose"),
    pytest.param({"files": {"file": ("a.jsonl", b"")}, "data": {"purpose": "batch"}}, 400, "file",
                 id="empty batch file"),
    pytest.param({"json": {"purpose": "batch"}}, 400, None, id="not multipart"),
]


@pytest.mark.parametrize(("kwargs", "status", "param"), BAD_UPLOADS)
async def test_malformed_uploads(client: httpx.AsyncClient, kwargs: dict[str, object], status: int,
                                 param: str | None) -> None:
    response = await client.post("/openai/v1/files", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert error.get("param") == param


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/openai/v1/files/file_nope", 404, "file_not_found"),
        ("GET", "/openai/v1/files/file_nope/content", 404, "file_not_found"),
        ("DELETE", "/openai/v1/files/file_nope", 404, "file_not_found"),
        ("GET", "/openai/v1/files?limit=0", 400, None),
        ("GET", "/openai/v1/files?limit=abc", 400, None),
        ("PATCH", "/openai/v1/files", 405, "method_not_allowed"),
        ("GET", "/openai/v1/nothing-here", 404, "unknown_url"),
    ],
)
async def test_bad_requests_get_groq_error_bodies(client: httpx.AsyncClient, method: str, path: str,
                                                  status: int, code: str | None) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"]
    assert error.get("code") == code


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc", "Bearer"])
async def test_auth_is_required(client: httpx.AsyncClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    client.headers.pop("Authorization")
    response = await client.get("/openai/v1/files", headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}
    }
