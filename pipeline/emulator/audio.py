"""``POST /audio/transcriptions`` and ``/audio/translations``, as Groq serves them.

Synchronously the body is a multipart form (the OpenAPI spec's ``CreateTranscriptionRequest`` /
``CreateTranslationRequest``: ``model``, ``file`` or ``url``, ``language``, ``prompt``,
``response_format``, ``temperature``, ``timestamp_granularities[]``); in a batch line it is the
same fields as JSON, where only ``url`` carries the audio ("the file field is not supported in
Batch API requests"). Fields the endpoint does not take are refused (the spec's
``additionalProperties: false``), as are timestamps without ``verbose_json`` and models that do
not serve the endpoint (``whisper-large-v3-turbo`` does not translate).

The transcript is deterministic, derived from the audio: the same bytes (or URL, which the
server does not fetch) with the same model, language and prompt give the same text. A data URL
(or an uploaded file) carrying a WAV is read for its real duration, which ``verbose_json``
reports with its segments' (and words') start and end times; other audio is given a length
from its size (16 kB a second), a URL one from its digest. ``usage`` reports the length as
``{"type": "duration", "seconds": N}`` (whole seconds, rounded up), beside ``x_groq.id``.

    >>> fields = {"model": "whisper-large-v3", "url": "https://example.com/a.wav"}
    >>> body = answer(validate(TRANSCRIPTIONS, fields, ModelRegistry(), in_batch=True))
    >>> sorted(body)
    ['text', 'usage', 'x_groq']
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from .errors import APIProblem, bad_request
from .http import JSONResponse
from .ids import new_id
from .models import ModelRegistry

if TYPE_CHECKING:
    from .server import Emulator

__all__ = ["AUDIO_URLS", "AudioRequest", "answer", "routes", "validate", "wav_duration_s"]

TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
AUDIO_URLS = frozenset({TRANSCRIPTIONS, TRANSLATIONS})
RESPONSE_FORMATS = ("json", "text", "verbose_json")
GRANULARITIES = frozenset({"word", "segment"})
_FIELDS = {
    TRANSCRIPTIONS: frozenset({"file", "url", "model", "language", "prompt", "response_format",
                               "temperature", "timestamp_granularities"}),
    # The docs' translation example passes language="en" ("'en' only"); the spec lists none.
    TRANSLATIONS: frozenset({"file", "url", "model", "language", "prompt", "response_format",
                             "temperature"}),
}
_NOT_TRANSLATING = frozenset({"whisper-large-v3-turbo"})
"""groq-docs "Speech to Text": turbo has no translation support."""
MIN_AUDIO_S = 0.01
MAX_PROMPT_CHARS = 896
MAX_FORM_PART_BYTES = 100 * 1024 * 1024
"""A data URL in a form field may be as large as the dev tier's 100 MB file limit."""
BYTES_PER_S_GUESS = 16_000
_LANGUAGES = {
    "en": "english", "fr": "french", "de": "german", "es": "spanish", "it": "italian",
    "pt": "portuguese", "nl": "dutch", "tr": "turkish", "ja": "japanese", "zh": "chinese",
    "ko": "korean", "ru": "russian", "ar": "arabic", "hi": "hindi", "pl": "polish",
}
_WORDS = (
    "the", "caller", "asks", "about", "an", "order", "that", "arrived", "late", "and", "we",
    "agree", "to", "send", "a", "replacement", "today", "thanks", "for", "waiting", "this",
    "recording", "is", "transcribed", "by", "the", "local", "server", "word", "for", "word",
)
WORDS_PER_S = 2.5
WORDS_PER_SEGMENT = 12


@dataclass(frozen=True, slots=True)
class AudioRequest:
    """A validated transcription or translation request."""

    endpoint: str
    model: str
    audio_digest: bytes
    duration_s: float
    language: str | None
    prompt: str | None
    response_format: str
    temperature: float
    granularities: frozenset[str]


def validate(endpoint: str, fields: Mapping[str, Any], models: ModelRegistry, *,
             in_batch: bool) -> AudioRequest:
    """Check a transcription/translation body (form fields, or a batch line's JSON) as Groq
    does; raise :class:`APIProblem` (4xx) if bad. ``file`` is bytes (an upload)."""
    allowed = _FIELDS[endpoint]
    for name in fields:
        if name not in allowed:
            raise bad_request(f"Unrecognized request argument supplied: {name}", param=name)
    model_id = fields.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise bad_request("`model` is required and must be a string", param="model",
                          code="missing_required_parameter")
    model = models.require(model_id)
    if not model.is_speech_to_text:
        raise bad_request(f"The model `{model_id}` does not support {endpoint.removeprefix('/v1')}",
                          param="model", code="model_not_supported")
    if endpoint == TRANSLATIONS and model_id in _NOT_TRANSLATING:
        raise bad_request(f"The model `{model_id}` does not support translations; "
                          "use `whisper-large-v3`", param="model", code="model_not_supported")
    audio, duration = _audio(fields, in_batch)
    fmt = fields.get("response_format", "json")
    if fmt not in RESPONSE_FORMATS:
        raise bad_request("`response_format` must be one of `json`, `text`, `verbose_json`",
                          param="response_format")
    temperature = _temperature(fields.get("temperature"))
    granularities = _granularities(fields.get("timestamp_granularities"), fmt)
    language = fields.get("language")
    if language is not None and (not isinstance(language, str) or not 2 <= len(language) <= 3):
        raise bad_request("`language` must be an ISO-639-1 code such as `en`", param="language")
    if endpoint == TRANSLATIONS and language not in (None, "en"):
        raise bad_request("translations answer in English: `language` may only be `en`",
                          param="language")
    prompt = fields.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise bad_request("`prompt` must be a string", param="prompt")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise bad_request(f"prompt length must be {MAX_PROMPT_CHARS} characters or fewer, but "
                          f"provided prompt contains {len(prompt)} characters", param="prompt")
    return AudioRequest(endpoint, model_id, hashlib.blake2b(audio, digest_size=16).digest(),
                        duration, language, prompt, fmt, temperature, granularities)


def _audio(fields: Mapping[str, Any], in_batch: bool) -> tuple[bytes, float]:
    """The audio's bytes (for a URL: the URL itself, which is not fetched) and its length."""
    file, url = fields.get("file"), fields.get("url")
    if in_batch and file is not None:
        raise bad_request("The `file` field is not supported in Batch API requests; use `url`.",
                          param="file")
    if (file is None) == (url is None):
        raise bad_request("Exactly one of `file` or `url` must be provided", param="url",
                          code="missing_required_parameter" if file is None else None)
    if file is not None:
        data = bytes(file)
    elif not isinstance(url, str) or not url.startswith(("http://", "https://", "data:")):
        raise bad_request("`url` must be an http(s) URL or a base64 data URL", param="url")
    elif url.startswith("data:"):
        data = _data_url_bytes(url)
    else:
        digest = hashlib.blake2b(url.encode(), digest_size=8).digest()
        return url.encode(), 5.0 + digest[0] % 56
    if not data:
        raise bad_request("The audio file is empty.", param="file" if file is not None else "url")
    duration = wav_duration_s(data)
    if duration is None:
        duration = round(len(data) / BYTES_PER_S_GUESS, 2)
    if duration < MIN_AUDIO_S:
        raise bad_request(f"Audio file is too short. Minimum audio length is {MIN_AUDIO_S} seconds.",
                          param="file" if file is not None else "url")
    return data, duration


def _data_url_bytes(url: str) -> bytes:
    head, comma, payload = url.partition(",")
    if not comma or not head.endswith(";base64"):
        raise bad_request("a data URL must be base64: `data:<type>;base64,<data>`", param="url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        try:  # Base64URL, as the docs call it
            return base64.b64decode(payload + "=" * (-len(payload) % 4), altchars=b"-_",
                                    validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("the data URL's payload is not valid base64", param="url") from None


def wav_duration_s(data: bytes) -> float | None:
    """The length of a RIFF/WAVE file in seconds (data bytes / byte rate); None if ``data`` is
    not one.

    >>> import io, wave
    >>> buffer = io.BytesIO()
    >>> with wave.open(buffer, "wb") as w:
    ...     w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000); w.writeframes(bytes(32000))
    >>> wav_duration_s(buffer.getvalue())
    1.0
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    byte_rate = None
    offset = 12
    while offset + 8 <= len(data):
        chunk = data[offset:offset + 4]
        size: int = struct.unpack_from("<I", data, offset + 4)[0]
        if chunk == b"fmt " and size >= 16 and offset + 24 <= len(data):
            byte_rate = int(struct.unpack_from("<I", data, offset + 16)[0])
        elif chunk == b"data":
            if not byte_rate:
                return None
            present = min(size, len(data) - offset - 8)
            return round(present / byte_rate, 3)
        offset += 8 + size + (size & 1)
    return None


def _temperature(raw: Any) -> float:
    if raw is None:
        return 0.0
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not 0 <= value <= 1:
        raise bad_request("`temperature` must be a number between 0 and 1", param="temperature")
    return value


def _granularities(raw: Any, fmt: str) -> frozenset[str]:
    if raw is None:
        return frozenset({"segment"})
    values = raw if isinstance(raw, list) else [raw]
    if not values or not all(v in GRANULARITIES for v in values):
        raise bad_request("`timestamp_granularities` items must be `word` or `segment`",
                          param="timestamp_granularities")
    if fmt != "verbose_json":
        raise bad_request("`response_format` must be set to `verbose_json` to use timestamp "
                          "granularities", param="timestamp_granularities")
    return frozenset(values)


# -- the answer -------------------------------------------------------------------------------


def answer(request: AudioRequest, *, request_id: str | None = None) -> dict[str, Any]:
    """The JSON answer (``json`` or ``verbose_json``; for ``text``, its ``text`` is the body)."""
    digest = hashlib.blake2b(
        b"\0".join([request.audio_digest, request.model.encode(), request.endpoint.encode(),
                    (request.language or "").encode(), (request.prompt or "").encode()]),
        digest_size=16,
    ).digest()
    count = max(3, min(400, round(request.duration_s * WORDS_PER_S)))
    start = digest[0] % len(_WORDS)
    step = 1 + digest[1] % 7
    words = [_WORDS[(start + i * step) % len(_WORDS)] for i in range(count)]
    words[0] = f"{words[0].capitalize()}"
    words.insert(1, f"[{digest.hex()[:8]}]")
    text = " ".join(words) + "."
    x_groq = {"id": request_id or new_id("req")}
    usage = {"type": "duration", "seconds": math.ceil(request.duration_s)}
    if request.response_format != "verbose_json":
        return {"text": text, "usage": usage, "x_groq": x_groq}
    translating = request.endpoint == TRANSLATIONS
    body: dict[str, Any] = {
        "task": "translate" if translating else "transcribe",
        "language": "english" if translating else _LANGUAGES.get(request.language or "en", "english"),
        "duration": request.duration_s,
        "text": text,
    }
    spoken = text.split(" ")
    per_word = request.duration_s / len(spoken)
    if "segment" in request.granularities:
        body["segments"] = [
            _segment(index, spoken[first:first + WORDS_PER_SEGMENT], first * per_word,
                     min(request.duration_s, (first + WORDS_PER_SEGMENT) * per_word),
                     request.temperature, digest)
            for index, first in enumerate(range(0, len(spoken), WORDS_PER_SEGMENT))
        ]
    if "word" in request.granularities:
        body["words"] = [{"word": word.strip("."), "start": round(i * per_word, 2),
                          "end": round((i + 1) * per_word, 2)} for i, word in enumerate(spoken)]
    body["usage"] = usage
    body["x_groq"] = x_groq
    return body


def _segment(index: int, words: list[str], start: float, end: float, temperature: float,
             digest: bytes) -> dict[str, Any]:
    text = " " + " ".join(words)
    return {
        "id": index,
        "seek": int(start * 100) // 3000 * 3000,
        "start": round(start, 2),
        "end": round(end, 2),
        "text": text,
        "tokens": [50364 + (digest[(index + i) % 16] * 97 + i) % 1000 for i in range(len(words))],
        "temperature": temperature,
        "avg_logprob": -round(0.05 + digest[index % 16] / 2550, 6),
        "compression_ratio": round(1.2 + digest[(index + 3) % 16] / 510, 6),
        "no_speech_prob": round(digest[(index + 5) % 16] / 25500, 6),
    }


def answer_line(endpoint: str, body: Mapping[str, Any], models: ModelRegistry) -> Any:
    """A batch line's answer body: the JSON answer, or for ``text`` the text (the response
    body a batch wraps)."""
    request = validate(endpoint, body, models, in_batch=True)
    completion = answer(request)
    return completion["text"] if request.response_format == "text" else completion


# -- the synchronous endpoints ----------------------------------------------------------------


async def _form_fields(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise bad_request("The request must be multipart/form-data (`model`, and `file` or `url`).")
    fields: dict[str, Any] = {}
    async with request.form(max_files=1, max_fields=32, max_part_size=MAX_FORM_PART_BYTES) as form:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                fields[key] = await value.read()
            elif key.endswith("[]"):
                fields.setdefault(key[:-2], []).append(value)
            elif key == "timestamp_granularities":
                fields.setdefault(key, []).append(value)
            else:
                fields[key] = value
    return fields


async def _serve(request: Request, endpoint: str) -> Response:
    emulator: Emulator = request.app.state.emulator
    audio = validate(endpoint, await _form_fields(request), emulator.models, in_batch=False)
    request_id = new_id("req")
    try:
        headers = emulator.rate_limiter.admit(audio.model, "on_demand", tokens=0)
    except APIProblem as problem:
        problem.headers.setdefault("x-request-id", request_id)
        raise
    headers["x-request-id"] = request_id
    body = answer(audio, request_id=request_id)
    if audio.response_format == "text":
        return PlainTextResponse(body["text"], headers=headers)
    return JSONResponse(body, headers=headers)


async def create_transcription(request: Request) -> Response:
    return await _serve(request, TRANSCRIPTIONS)


async def create_translation(request: Request) -> Response:
    return await _serve(request, TRANSLATIONS)


routes: list[BaseRoute] = [
    Route("/audio/transcriptions", create_transcription, methods=["POST"]),
    Route("/audio/translations", create_translation, methods=["POST"]),
]
