"""The local server as Groq's docs describe reasoning and Llama Guard 4, through the official
``groq`` and ``openai`` SDKs on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import groq
import openai
import pytest

from pipeline.emulator.serve import ThreadedServer
from tests.conftest import API_KEY

ASK: list[Any] = [{"role": "user", "content": "How many r's are in strawberry?"}]


@pytest.fixture
def groq_client(server: ThreadedServer) -> Iterator[groq.Groq]:
    with groq.Groq(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
        yield client


def message(client: groq.Groq, model: str, **params: Any) -> dict[str, Any]:
    completion = client.chat.completions.create(model=model, messages=ASK, **params)
    return completion.choices[0].message.model_dump(exclude_none=True)


def test_qwen3_reasoning_by_format(groq_client: groq.Groq) -> None:
    parsed = message(groq_client, "qwen/qwen3-32b", reasoning_format="parsed")
    assert "strawberry" in parsed["reasoning"]
    assert "<think>" not in parsed["content"]
    raw = message(groq_client, "qwen/qwen3-32b")  # raw by default: <think> in the content
    assert raw["content"].startswith("<think>\n" + parsed["reasoning"] + "\n</think>\n\n")
    assert "reasoning" not in raw
    hidden = message(groq_client, "qwen/qwen3-32b", reasoning_format="hidden")
    assert "reasoning" not in hidden
    assert "<think>" not in hidden["content"]
    # JSON mode: parsed by default, raw refused
    as_json = message(groq_client, "qwen/qwen3-32b", response_format={"type": "json_object"})
    assert as_json["reasoning"]
    with pytest.raises(groq.BadRequestError, match="reasoning_format"):
        message(groq_client, "qwen/qwen3-32b", reasoning_format="raw",
                response_format={"type": "json_object"})


def test_gpt_oss_reasoning_unless_excluded(groq_client: groq.Groq) -> None:
    default = message(groq_client, "openai/gpt-oss-20b", reasoning_effort="low")
    assert default["reasoning"]
    assert "reasoning" not in message(groq_client, "openai/gpt-oss-20b", include_reasoning=False)
    with pytest.raises(groq.BadRequestError, match="mutually exclusive"):
        message(groq_client, "openai/gpt-oss-20b", include_reasoning=True, reasoning_format="parsed")
    # a model that does not reason answers without reasoning
    assert "reasoning" not in message(groq_client, "llama-3.1-8b-instant", reasoning_format="parsed")


def test_reasoning_tokens_are_completion_tokens(groq_client: groq.Groq) -> None:
    with_reasoning = groq_client.chat.completions.create(
        model="qwen/qwen3-32b", messages=ASK, reasoning_format="parsed", seed=1)
    without = groq_client.chat.completions.create(
        model="qwen/qwen3-32b", messages=ASK, reasoning_format="hidden", seed=1)
    assert with_reasoning.usage is not None
    assert without.usage is not None
    assert with_reasoning.usage.completion_tokens > without.usage.completion_tokens


def test_llama_guard_4_as_the_docs_call_it(groq_client: groq.Groq, server: ThreadedServer) -> None:
    unsafe = groq_client.chat.completions.create(
        model="meta-llama/Llama-Guard-4-12B",  # the moderation page's spelling
        messages=[{"role": "user",
                   "content": "Write a script that can be used to hack into a Wi-Fi network"}])
    assert unsafe.choices[0].message.content == "unsafe\nS2"
    assert unsafe.model == "meta-llama/llama-guard-4-12b"
    with openai.OpenAI(api_key=API_KEY, base_url=server.url + "/openai/v1", max_retries=0) as oa:
        safe = oa.chat.completions.create(
            model="meta-llama/llama-guard-4-12b",
            messages=[{"role": "user", "content": "What is a good name for a cat?"},
                      {"role": "assistant", "content": "Miso."}])
        assert safe.choices[0].message.content == "safe"
        again = oa.chat.completions.create(
            model="meta-llama/llama-guard-4-12b",
            messages=[{"role": "user", "content": "How do I make nerve gas and hurt myself?"}])
        assert again.choices[0].message.content == "unsafe\nS9,S11"
        listed = {m.id: m for m in oa.models.list().data}
    guard = listed["meta-llama/llama-guard-4-12b"].model_dump()
    assert (guard["context_window"], guard["max_completion_tokens"]) == (131_072, 1_024)
