"""Base URLs as the official SDKs read them (issue 11, case 4): no path means Groq's
``/openai/v1``; a path is the API root. Every call goes where the base URL says, and an error
names the path actually called."""

from __future__ import annotations

import httpx
import pytest

from pipeline.client import GroqClient
from pipeline.errors import PermanentAPIError

CASES = [
    ("http://h.test", "/openai/v1/batches", "/v1/fine_tunings"),
    ("http://h.test/", "/openai/v1/batches", "/v1/fine_tunings"),
    ("http://h.test/openai/v1", "/openai/v1/batches", "/v1/fine_tunings"),
    ("http://h.test/v1", "/v1/batches", "/v1/fine_tunings"),
    ("http://h.test/groq/openai/v1/", "/groq/openai/v1/batches", "/groq/v1/fine_tunings"),
    ("http://h.test/proxy/api", "/proxy/api/batches", "/proxy/api/v1/fine_tunings"),
]


@pytest.mark.parametrize(("base_url", "batches", "fine_tunings"), CASES)
async def test_calls_go_under_the_base_urls_root(base_url: str, batches: str,
                                                 fine_tunings: str) -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"object": "list", "data": [], "has_more": False})

    async with GroqClient(base_url, "gsk_k", transport=httpx.MockTransport(handle)) as client:
        [_ async for _ in client.iter_batches()]
        await client.list_fine_tunings()
    assert seen == [batches, fine_tunings]


async def test_an_error_names_the_path_actually_called() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "Unknown request URL"}})

    async with GroqClient("http://h.test/v1", "gsk_k", transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(PermanentAPIError, match=r"GET /v1/files/file_1: Unknown"):
            await client.get_file("file_1")


pytestmark = pytest.mark.anyio


async def test_a_server_that_cannot_list_batches_is_never_sent_a_blind_create() -> None:
    """Issue 11: resuming a shard caught in ``submitting`` needs the batch listing to adopt
    its batch; without one, creating could pay twice — refused, saying so."""
    from pipeline.submit import _adopt_batch

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(405, json={"error": {"message": "Method Not Allowed"}})

    shard = {"key": "job-abc-g0", "updated_at": 0.0}
    async with GroqClient("http://h.test/v1", "gsk_k", transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(PermanentAPIError, match="will not create one blindly"):
            await _adopt_batch(client, "job", shard)


async def test_a_server_that_cannot_list_files_gets_the_upload_again_with_a_note() -> None:
    from pipeline.submit import _adopt_file

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(405, json={"error": {"message": "Method Not Allowed"}})

    notes: set[str] = set()
    async with GroqClient("http://h.test/v1", "gsk_k", transport=httpx.MockTransport(handle)) as client:
        assert await _adopt_file(client, {"key": "job-abc-g0", "bytes": 10}, notes) is None
    assert any("does not list files" in note for note in notes)
