"""The deterministic chat responder: Groq's chat-completion validation and answer shape.

The same request (model, messages, seed, response format) always gets the same answer text,
and every request gets its own: the answer names a digest of the request and echoes the
first words of the last user message::

    Reply 3f9a1c0d2b7e to "summarise the attached ticket please": alpha bravo …

A LoRA ``ft:`` model answers in its own voice, naming its adapter::

    [LoRA my-adapter] REPLY 9c… TO "SUMMARISE THE ATTACHED TICKET PLEASE" » …

Tokens are estimated as one per 4 characters of text (at least 1), plus 4 per message for the
role markers and 85 per image; ``usage`` timings follow from the counts.

    responder = Responder(ModelRegistry())
    completion = responder.complete({"model": "llama-3.1-8b-instant",
                                     "messages": [{"role": "user", "content": "hi"}]},
                                    service_tier="on_demand")
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import bad_request
from .ids import chat_completion_id, new_id
from .models import GUARD_MODEL, ModelInfo, ModelRegistry
from .moderation import verdict
from .schema_fill import SchemaError, fill
from .tools import ToolSet, parse_tools, tool_call

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SERVICE_TIERS = frozenset({"auto", "on_demand", "flex", "performance"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKENS = 85
SNIPPET_WORDS = 8
_VOCABULARY = (
    "the", "answer", "follows", "from", "the", "request", "as", "given", "and", "stays", "the",
    "same", "for", "the", "same", "input", "while", "every", "distinct", "prompt", "receives",
    "its", "own", "distinct", "reply", "built", "from", "these", "words",
)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'_-]*")


def estimate_tokens(text: str) -> int:
    """The emulator's token count of ``text``: one per 4 characters, at least 1."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat-completion body."""

    model: ModelInfo
    messages: list[dict[str, Any]]
    prompt_tokens: int
    max_completion_tokens: int | None
    response_format: dict[str, Any] | None
    stop: tuple[str, ...]
    seed: int | None
    service_tier: str | None
    last_user_text: str
    reasoning: str | None = None
    """How reasoning comes back: ``parsed`` (``message.reasoning``), ``raw`` (``<think>`` in the
    content) or None (none: a model that does not reason, ``hidden``, or
    ``include_reasoning: false``)."""
    screened_texts: tuple[str, ...] = ()
    """The user and assistant turns' text: what Llama Guard screens."""
    tools: ToolSet | None = None
    """``tools`` and ``tool_choice``, if the request has tools (see :mod:`.tools`)."""


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"`{name}` must be a number", param=name)
    return float(value)


def _positive_int(body: Mapping[str, Any], name: str, model: ModelInfo) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"`{name}` must be a positive integer", param=name)
    if value > model.max_completion_tokens:
        raise bad_request(
            f"`{name}` must be less than or equal to `{model.max_completion_tokens}`, "
            f"the maximum value for `{name}` is less than the `context_window` for this model",
            param=name,
        )
    return value


def _content_text(content: Any, index: int, model: ModelInfo) -> tuple[str, int]:
    """The text of a message's content and the number of images in it."""
    where = f"messages[{index}].content"
    if isinstance(content, str):
        return content, 0
    if content is None:
        return "", 0
    if not isinstance(content, list):
        raise bad_request(f"`{where}` must be a string or an array of content parts", param=where)
    texts: list[str] = []
    images = 0
    for part_index, part in enumerate(content):
        part_where = f"{where}[{part_index}]"
        if not isinstance(part, Mapping):
            raise bad_request(f"`{part_where}` must be an object", param=part_where)
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, Mapping) or not isinstance(image.get("url"), str):
                raise bad_request(f"`{part_where}.image_url.url` must be a string",
                                  param=f"{part_where}.image_url")
            if "image" not in model.input_modalities:
                raise bad_request(
                    f"`{part_where}`: model `{model.id}` does not support image inputs",
                    param=part_where,
                )
            images += 1
        else:
            raise bad_request(
                f"`{part_where}` must be a text part (`text`) or an `image_url` part",
                param=part_where,
            )
    return " ".join(texts), images


def _reasoning_mode(body: Mapping[str, Any], model: ModelInfo) -> str | None:
    """How ``model`` returns its reasoning for ``body`` (Groq's "Reasoning" page): GPT-OSS in
    ``message.reasoning`` unless ``include_reasoning: false``; Qwen 3 by ``reasoning_format``,
    ``raw`` by default but ``parsed`` with JSON mode or tools, where ``raw`` is refused."""
    fmt = body.get("reasoning_format")
    include = body.get("include_reasoning")
    if fmt is not None and include is not None:
        raise bad_request("`reasoning_format` and `include_reasoning` are mutually exclusive",
                          param="reasoning_format")
    if fmt is not None and fmt not in ("parsed", "raw", "hidden"):
        raise bad_request("`reasoning_format` must be one of `parsed`, `raw`, `hidden`",
                          param="reasoning_format")
    if include is not None and not isinstance(include, bool):
        raise bad_request("`include_reasoning` must be a boolean", param="include_reasoning")
    if "reasoning" not in model.features:
        return None
    if body.get("reasoning_effort") == "none" or include is False or fmt == "hidden":
        return None
    if model.id.startswith("openai/gpt-oss"):
        return "parsed"
    response_format = body.get("response_format")
    structured = isinstance(response_format, Mapping) and response_format.get("type") in (
        "json_object", "json_schema")
    if structured or body.get("tools"):
        if fmt == "raw":
            raise bad_request("`reasoning_format` must be `parsed` or `hidden` with JSON mode or "
                              "tool use", param="reasoning_format")
        return "parsed"
    return "parsed" if fmt == "parsed" or include is True else "raw"


def _validate_messages(raw: Any, model: ModelInfo) -> tuple[list[dict[str, Any]], int, str]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("`messages` must be a non-empty array", param="messages")
    tokens = 3
    last_user = ""
    for index, message in enumerate(raw):
        if not isinstance(message, Mapping):
            raise bad_request(f"`messages[{index}]` must be an object", param=f"messages[{index}]")
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(
                f"`messages[{index}].role` must be one of system, user, assistant, tool",
                param=f"messages[{index}].role",
            )
        if "content" not in message and role != "assistant":
            raise bad_request(f"`messages[{index}].content` is required",
                              param=f"messages[{index}].content")
        text, images = _content_text(message.get("content"), index, model)
        tokens += MESSAGE_OVERHEAD_TOKENS + (estimate_tokens(text) if text else 0)
        tokens += images * IMAGE_TOKENS
        if role == "user":
            last_user = text
    return [dict(m) for m in raw], tokens, last_user


def _response_format(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or raw.get("type") not in RESPONSE_FORMATS:
        raise bad_request(
            "`response_format.type` must be one of `text`, `json_object`, `json_schema`",
            param="response_format",
        )
    if raw["type"] == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), Mapping | bool):
            raise bad_request(
                "`response_format.json_schema` must be an object with a `schema`",
                param="response_format.json_schema",
            )
    return dict(raw)


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,) if raw else ()
    if isinstance(raw, list) and len(raw) <= 4 and all(isinstance(s, str) for s in raw):
        return tuple(s for s in raw if s)
    raise bad_request("`stop` must be a string or an array of at most 4 strings", param="stop")


def validate(body: Mapping[str, Any], models: ModelRegistry) -> ChatRequest:
    """Check a chat-completion body as Groq does; raise :class:`APIProblem` (4xx) if bad."""
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise bad_request("`model` is required and must be a string", param="model")
    model = models.require(model_id)
    if model.is_speech_to_text:
        raise bad_request(
            f"The model `{model_id}` does not support chat completions; it serves "
            "/audio/transcriptions and /audio/translations.",
            param="model", code="model_not_supported",
        )
    messages, prompt_tokens, last_user = _validate_messages(body.get("messages"), model)
    if body.get("stream"):
        raise bad_request(
            "`stream` is not supported by the local server; send `stream: false`", param="stream"
        )
    if body.get("n") not in (None, 1):
        raise bad_request("`n` : number must be at most 1", param="n")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise bad_request("`logprobs` is not supported", param="logprobs")
    temperature = _number(body, "temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        raise bad_request("`temperature` must be between 0 and 2", param="temperature")
    top_p = _number(body, "top_p")
    if top_p is not None and not 0 <= top_p <= 1:
        raise bad_request("`top_p` must be between 0 and 1", param="top_p")
    max_tokens = _positive_int(body, "max_completion_tokens", model)
    if max_tokens is None:
        max_tokens = _positive_int(body, "max_tokens", model)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request("`seed` must be an integer", param="seed")
    tier = body.get("service_tier")
    if tier is not None and tier not in SERVICE_TIERS:
        raise bad_request(
            "`service_tier` must be one of `auto`, `on_demand`, `flex`, `performance`",
            param="service_tier",
        )
    return ChatRequest(
        model=model,
        messages=messages,
        prompt_tokens=prompt_tokens,
        max_completion_tokens=max_tokens,
        response_format=_response_format(body.get("response_format")),
        stop=_stop(body.get("stop")),
        seed=seed,
        service_tier=tier,
        last_user_text=last_user,
        reasoning=_reasoning_mode(body, model),
        screened_texts=tuple(_content_text(m.get("content"), i, model)[0]
                             for i, m in enumerate(messages)
                             if m.get("role") in ("user", "assistant"))
        if model.id == GUARD_MODEL else (),
        tools=parse_tools(body),
    )


class Responder:
    """Answers validated chat requests deterministically (``created`` from ``clock``)."""

    def __init__(self, models: ModelRegistry, clock: Callable[[], float] | None = None) -> None:
        self.models = models
        self._now = clock or time.time

    def validate(self, body: Mapping[str, Any]) -> ChatRequest:
        return validate(body, self.models)

    def complete(self, body: Mapping[str, Any], *, service_tier: str,
                 at: float | None = None) -> dict[str, Any]:
        """Validate ``body`` and answer it; ``service_tier`` is the tier that served it, ``at``
        the (emulated) time it ran — a batch line's own time, not when the server got to it."""
        return self.answer(self.validate(body), service_tier=service_tier, at=at)

    def answer(self, request: ChatRequest, *, service_tier: str,
               at: float | None = None) -> dict[str, Any]:
        digest = _digest(request)
        called = request.tools.pick(digest) if request.tools is not None else None
        if called is not None:
            return self._called(request, called, digest, service_tier, at)
        content = self._content(request, digest)
        reasoning = _reasoning_text(request, digest) if request.reasoning else None
        if reasoning is not None and request.reasoning == "raw":
            content, reasoning = f"<think>\n{reasoning}\n</think>\n\n{content}", None
        finish_reason = "stop"
        for stop in request.stop:
            if stop in content:
                content = content[: content.index(stop)]
        limit = request.max_completion_tokens
        if limit is not None and estimate_tokens(content) > limit:
            content = content[: limit * CHARS_PER_TOKEN]
            finish_reason = "length"
        completion_tokens = estimate_tokens(content)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning is not None:  # reasoning tokens are completion tokens too
            message["reasoning"] = reasoning
            completion_tokens += estimate_tokens(reasoning)
        return self._completion(request, message, finish_reason, completion_tokens, digest,
                                service_tier, at)

    def _called(self, request: ChatRequest, function: tuple[str, Mapping[str, Any]],
                digest: bytes, service_tier: str, at: float | None) -> dict[str, Any]:
        """An answer that calls ``function``: content null, ``tool_calls`` with arguments
        that fit its parameters."""
        call = tool_call(function, _WORD.findall(request.last_user_text), digest)
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return self._completion(request, message, "tool_calls",
                                estimate_tokens(orjson.dumps(call).decode()), digest,
                                service_tier, at)

    def _completion(self, request: ChatRequest, message: dict[str, Any], finish_reason: str,
                    completion_tokens: int, digest: bytes, service_tier: str,
                    at: float | None) -> dict[str, Any]:
        """A chat completion as Groq shapes it, around one choice's ``message``."""
        model = request.model
        return {
            "id": chat_completion_id(),
            "object": "chat.completion",
            "created": int(self._now() if at is None else at),
            "model": model.id,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": _usage(request.prompt_tokens, completion_tokens, digest),
            "usage_breakdown": None,
            "system_fingerprint": "fp_" + hashlib.blake2b(model.id.encode(), digest_size=5).hexdigest(),
            "x_groq": {"id": new_id("req"), "seed": _seed_of(request, digest)},
            "service_tier": "on_demand" if service_tier in ("auto", "", None) else service_tier,
        }

    def _content(self, request: ChatRequest, digest: bytes) -> str:
        if request.model.id == GUARD_MODEL:
            return verdict(request.screened_texts)
        words = _WORD.findall(request.last_user_text)
        fmt = (request.response_format or {}).get("type", "text")
        if fmt == "json_schema":
            spec = (request.response_format or {}).get("json_schema") or {}
            try:
                value = fill(spec.get("schema", {}), words, digest)
            except (SchemaError, TypeError, ValueError, RecursionError) as exc:
                raise bad_request(
                    f"Invalid JSON schema in `response_format.json_schema.schema`: {exc}",
                    param="response_format", code="invalid_json_schema",
                ) from None
            return orjson.dumps(value).decode()
        text = _prose(request, words, digest)
        if fmt == "json_object":
            return orjson.dumps({
                "answer": text,
                "echo": " ".join(words[:SNIPPET_WORDS]),
                "digest": digest.hex()[:12],
                "model": request.model.id,
            }).decode()
        return text


def _digest(request: ChatRequest) -> bytes:
    parts: list[Any] = [request.model.id, request.messages, request.seed, request.response_format]
    if request.tools is not None:  # only then: answers to requests without tools stay as they were
        parts.append([request.tools.functions, request.tools.choice])
    key = orjson.dumps(
        parts,
        option=orjson.OPT_SORT_KEYS,
        default=str,
    )
    return hashlib.blake2b(key, digest_size=16).digest()


def _prose(request: ChatRequest, words: list[str], digest: bytes) -> str:
    snippet = " ".join(words[:SNIPPET_WORDS])
    count = 8 + digest[0] % 17
    start = digest[1] % len(_VOCABULARY)
    filler = [_VOCABULARY[(start + i * (1 + digest[2] % 5)) % len(_VOCABULARY)] for i in range(count)]
    tag = digest.hex()[:12]
    model = request.model
    if model.is_adapter:
        body = " ".join(reversed(filler)).upper()
        return f'[LoRA {model.adapter_name}] REPLY {tag} TO "{snippet.upper()}" » {body}.'
    return f'Reply {tag} to "{snippet}": {" ".join(filler).capitalize()}.'


def _reasoning_text(request: ChatRequest, digest: bytes) -> str:
    """The reasoning a reasoning model shows: deterministic, naming the request's digest."""
    snippet = " ".join(_WORD.findall(request.last_user_text)[:SNIPPET_WORDS])
    steps = 2 + digest[5] % 3
    return (f'Thinking about "{snippet}" (request {digest.hex()[:12]}): '
            + " ".join(f"step {i + 1} checks the request." for i in range(steps)))


def _seed_of(request: ChatRequest, digest: bytes) -> int:
    if request.seed is not None:
        return request.seed
    return int.from_bytes(digest[4:8], "big") & 0x7FFFFFFF


def _usage(prompt_tokens: int, completion_tokens: int, digest: bytes) -> dict[str, Any]:
    """Groq's usage block; timings are a fixed function of the counts (emulated speeds)."""
    queue_time = round(0.01 + digest[3] / 2550, 9)
    prompt_time = round(prompt_tokens / 50_000, 9)
    completion_time = round(completion_tokens / 800, 9)
    return {
        "queue_time": queue_time,
        "prompt_tokens": prompt_tokens,
        "prompt_time": prompt_time,
        "completion_tokens": completion_tokens,
        "completion_time": completion_time,
        "total_tokens": prompt_tokens + completion_tokens,
        "total_time": round(prompt_time + completion_time, 9),
    }


__all__ = ["ChatRequest", "Responder", "estimate_tokens", "validate"]
