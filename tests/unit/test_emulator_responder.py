"""The local server's chat responder, JSON-schema filler and rate-limit arithmetic."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.emulator.clock import VirtualClock
from pipeline.emulator.config import RateLimit
from pipeline.emulator.errors import APIProblem
from pipeline.emulator.models import ModelRegistry
from pipeline.emulator.ratelimit import RateLimiter, go_duration
from pipeline.emulator.responder import Responder, estimate_tokens
from pipeline.emulator.schema_fill import SchemaError, fill

MODEL = "llama-3.1-8b-instant"


def body(text: str = "summarise the attached ticket please", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def responder() -> Responder:
    return Responder(ModelRegistry(), clock=lambda: 1_700_000_000.5)


def content(completion: dict[str, Any]) -> str:
    text: str = completion["choices"][0]["message"]["content"]
    return text


def test_same_request_same_answer_and_fresh_ids(responder: Responder) -> None:
    first = responder.complete(body(), service_tier="on_demand")
    second = responder.complete(body(), service_tier="on_demand")
    assert content(first) == content(second)
    assert first["usage"] == second["usage"]
    assert first["id"] != second["id"]
    assert first["id"].startswith("chatcmpl-")
    assert first["x_groq"]["id"] != second["x_groq"]["id"]
    assert first["x_groq"]["id"].startswith("req_")
    assert first["created"] == 1_700_000_000


def test_each_request_gets_its_own_answer_echoing_its_words(responder: Responder) -> None:
    answers = {content(responder.complete(body(f"question number {i}"), service_tier="flex"))
               for i in range(50)}
    assert len(answers) == 50
    assert all("question number" in a for a in answers)


def test_seed_changes_the_answer(responder: Responder) -> None:
    plain = responder.complete(body(), service_tier="on_demand")
    seeded = responder.complete(body(seed=7), service_tier="on_demand")
    assert content(plain) != content(seeded)
    assert seeded["x_groq"]["seed"] == 7


def test_shape_usage_and_tier_echo(responder: Responder) -> None:
    completion = responder.complete(body(), service_tier="auto")
    assert completion["service_tier"] == "on_demand"
    assert completion["object"] == "chat.completion"
    assert completion["system_fingerprint"].startswith("fp_")
    usage = completion["usage"]
    assert set(usage) == {"queue_time", "prompt_tokens", "prompt_time", "completion_tokens",
                          "completion_time", "total_tokens", "total_time"}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == estimate_tokens(content(completion))
    assert responder.complete(body(), service_tier="flex")["service_tier"] == "flex"


@pytest.mark.parametrize(("text", "tokens"), [("", 1), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)])
def test_token_estimate(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_prompt_tokens_grow_with_the_prompt(responder: Responder) -> None:
    short = responder.complete(body("hi"), service_tier="on_demand")["usage"]["prompt_tokens"]
    long = responder.complete(body("hi " * 400), service_tier="on_demand")["usage"]["prompt_tokens"]
    assert long - short == estimate_tokens("hi " * 400) - estimate_tokens("hi")


def test_max_tokens_truncates_with_length(responder: Responder) -> None:
    completion = responder.complete(body(max_completion_tokens=3), service_tier="on_demand")
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 3
    assert len(content(completion)) == 12


def test_stop_cuts_the_answer(responder: Responder) -> None:
    full = content(responder.complete(body(), service_tier="on_demand"))
    cut = content(responder.complete(body(stop=["attached"]), service_tier="on_demand"))
    assert cut == full[: full.index("attached")]


def test_json_object_answer_is_a_json_object(responder: Responder) -> None:
    completion = responder.complete(body(response_format={"type": "json_object"}), service_tier="flex")
    value = json.loads(content(completion))
    assert isinstance(value, dict)
    assert value["echo"] == "summarise the attached ticket please"


def test_adapter_answers_differ_from_base(responder: Responder) -> None:
    adapter = responder.models.register_adapter(
        "ft:llama-3.1-8b-instant:org/support-bot-0123456789ab",
        base_model=MODEL, name="support-bot", created=1,
    )
    base = content(responder.complete(body(), service_tier="on_demand"))
    tuned_body = body()
    tuned_body["model"] = adapter.id
    tuned = content(responder.complete(tuned_body, service_tier="on_demand"))
    assert tuned != base
    assert "[LoRA support-bot]" in tuned
    assert "SUMMARISE THE ATTACHED" in tuned
    assert tuned == content(responder.complete(tuned_body, service_tier="on_demand"))


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"model": None}, 400, "model"),
        ({"model": "nope"}, 404, "model"),
        ({"messages": []}, 400, "messages"),
        ({"messages": "hi"}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({"n": 2}, 400, "n"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"stream": True}, 400, "stream"),
        ({"temperature": 2.5}, 400, "temperature"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"max_completion_tokens": 0}, 400, "max_completion_tokens"),
        ({"max_tokens": 10**7}, 400, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"response_format": {"type": "xml"}}, 400, "response_format"),
        ({"service_tier": "gold"}, 400, "service_tier"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]},
         400, "messages[0].content[0]"),
    ],
)
def test_invalid_bodies(responder: Responder, change: dict[str, Any], status: int, param: str) -> None:
    with pytest.raises(APIProblem) as caught:
        responder.complete({**body(), **change}, service_tier="on_demand")
    assert caught.value.status_code == status
    assert caught.value.param == param


def test_images_accepted_by_vision_models(responder: Responder) -> None:
    parts = [{"type": "text", "text": "what is this"},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    completion = responder.complete(
        {"model": "meta-llama/llama-4-scout-17b-16e-instruct",
         "messages": [{"role": "user", "content": parts}]}, service_tier="on_demand")
    assert "what is this" in content(completion)


# --- JSON schema answers ----------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 12},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 2, "maxItems": 4},
        "kind": {"const": "person"},
        "pet": {"anyOf": [{"$ref": "#/$defs/pet"}, {"type": "null"}]},
        "nick": {"type": ["string", "null"]},
        "friends": {"type": "array", "items": {"$ref": "#/definitions/friend"}},
    },
    "required": ["name", "age", "score", "email", "tags", "kind", "pet", "nick", "friends"],
    "additionalProperties": False,
    "$defs": {"pet": {"type": "object", "properties": {"legs": {"type": "integer", "multipleOf": 2}},
                      "required": ["legs"], "additionalProperties": False}},
    "definitions": {"friend": {"type": "object", "properties": {"ok": {"type": "boolean"},
                                                                 "none": {"type": "null"}}}},
}


def test_json_schema_answer_fits_its_schema(responder: Responder) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    completion = responder.complete(body(response_format=fmt), service_tier="on_demand")
    jsonschema.validate(json.loads(content(completion)), PERSON)
    other = responder.complete(body("another person", response_format=fmt), service_tier="on_demand")
    assert content(other) != content(completion)


def test_unfillable_schema_is_a_400(responder: Responder) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(APIProblem) as caught:
        responder.complete(body(response_format=fmt), service_tier="on_demand")
    assert caught.value.status_code == 400
    with pytest.raises(SchemaError):
        fill({"type": "integer", "minimum": 5, "maximum": 1}, [], b"")


def _schemas() -> st.SearchStrategy[dict[str, Any]]:
    def bounded_int(draw: st.DrawFn) -> dict[str, Any]:
        low = draw(st.integers(-50, 50))
        schema: dict[str, Any] = {"type": "integer", "minimum": low}
        if draw(st.booleans()):
            schema["maximum"] = low + draw(st.integers(0, 100))
        return schema

    @st.composite
    def integer(draw: st.DrawFn) -> dict[str, Any]:
        return bounded_int(draw)

    @st.composite
    def number(draw: st.DrawFn) -> dict[str, Any]:
        low = draw(st.floats(-100, 100, allow_nan=False))
        return {"type": "number", "minimum": low, "maximum": low + draw(st.floats(0, 50))}

    @st.composite
    def string(draw: st.DrawFn) -> dict[str, Any]:
        low = draw(st.integers(0, 20))
        schema: dict[str, Any] = {"type": "string", "minLength": low}
        if draw(st.booleans()):
            schema["maxLength"] = low + draw(st.integers(0, 20))
        return schema

    leaves = st.one_of(
        integer(), number(), string(),
        st.just({"type": "boolean"}), st.just({"type": "null"}),
        st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True).map(lambda e: {"enum": e}),
        st.integers().map(lambda v: {"const": v}),
    )

    def extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        @st.composite
        def obj(draw: st.DrawFn) -> dict[str, Any]:
            props = draw(st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), children,
                                         max_size=4))
            required = [k for k in props if draw(st.booleans())]
            return {"type": "object", "properties": props, "required": required,
                    "additionalProperties": False}

        @st.composite
        def array(draw: st.DrawFn) -> dict[str, Any]:
            low = draw(st.integers(0, 3))
            return {"type": "array", "items": draw(children), "minItems": low,
                    "maxItems": low + draw(st.integers(0, 3))}

        branches = st.lists(children, min_size=1, max_size=3).map(lambda b: {"anyOf": b})
        one_of = st.lists(children, min_size=1, max_size=3).map(lambda b: {"oneOf": b[:1]})
        return st.one_of(obj(), array(), branches, one_of)

    return st.recursive(leaves, extend, max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_schemas(), text=st.text(max_size=40), seed=st.binary(min_size=1, max_size=8))
def test_generated_schemas_are_filled_validly(schema: dict[str, Any], text: str, seed: bytes) -> None:
    wrapped = {"type": "object", "properties": {"value": {"$ref": "#/$defs/v"}},
               "required": ["value"], "$defs": {"v": schema}}
    value = fill(wrapped, text.split(), seed)
    jsonschema.validate(value, wrapped, cls=jsonschema.Draft202012Validator)
    assert fill(wrapped, text.split(), seed) == value


# --- rate limits ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"), (-1, "0s"), (5e-7, "500ns"), (0.0000015, "1.5µs"), (0.00744, "7.44ms"),
        (0.172799999, "172.799999ms"), (86400 / 500000, "172.8ms"), (0.25, "250ms"), (1, "1s"), (7.66, "7.66s"),
        (179.56, "2m59.56s"), (360, "6m0s"), (3600, "1h0m0s"), (86399.5, "23h59m59.5s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_token_buckets_refill_on_the_virtual_clock() -> None:
    clock = VirtualClock(start=1_000_000)
    limiter = RateLimiter({MODEL: RateLimit(requests_per_minute=2, requests_per_day=5,
                                            tokens_per_minute=600)}, clock)
    first = limiter.admit(MODEL, "on_demand", tokens=100)
    # Groq's table: the requests headers are the day's (RPD), the tokens headers the minute's.
    assert first["x-ratelimit-limit-requests"] == "5"
    assert first["x-ratelimit-remaining-requests"] == "4"
    assert first["x-ratelimit-reset-requests"] == "4h48m0s"  # one of 5 a day refills in 86400/5 s
    assert first["x-ratelimit-limit-tokens"] == "600"
    assert first["x-ratelimit-remaining-tokens"] == "500"
    assert first["x-ratelimit-reset-tokens"] == "10s"
    limiter.admit(MODEL, "on_demand", tokens=100)
    with pytest.raises(APIProblem) as caught:  # the minute's requests: only a 429 says so
        limiter.admit(MODEL, "on_demand", tokens=100)
    assert caught.value.status_code == 429
    assert caught.value.type == "requests"
    assert "on requests per minute (RPM): Limit 2, Used 2, Requested 1." in caught.value.message
    assert caught.value.headers["retry-after"] == "30"
    assert caught.value.headers["x-ratelimit-remaining-requests"] == "3"
    with pytest.raises(APIProblem) as too_big:
        limiter.admit(MODEL, "on_demand", tokens=601)
    assert too_big.value.status_code == 413
    clock.advance(60)
    assert limiter.admit(MODEL, "on_demand", tokens=100)["x-ratelimit-remaining-requests"] == "2"
    # Tiers are limited apart; an unlimited model still reports headers.
    assert limiter.admit(MODEL, "flex", tokens=1)["x-ratelimit-remaining-requests"] == "4"
    free = limiter.admit("qwen/qwen3-32b", "on_demand", tokens=5)
    assert int(free["x-ratelimit-limit-tokens"]) >= 10**9
