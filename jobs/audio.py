"""Audio jobs: ``/v1/audio/transcriptions`` and ``/v1/audio/translations`` through the Batch API.

A job config names the endpoint and has an ``[audio]`` table instead of ``[prompt]``::

    name = "transcribe-calls"
    endpoint = "/v1/audio/transcriptions"
    model = "whisper-large-v3-turbo"

    [input]
    path = "data/calls.jsonl"
    id_column = "call_id"

    [audio]
    url = "{{ audio_url }}"                # a URL, or a data URL (Base64) — a batch takes no file
    language = "en"
    response_format = "verbose_json"
    timestamp_granularities = ["segment"]

Each row becomes the body Groq's synchronous endpoint takes, sent as a batch line's ``body``
(groq-docs "Batch Processing" → "Prepare Your Batch File"): ``{"model", "url", "language",
"prompt", "response_format", "temperature", "timestamp_granularities"}`` — only the fields set.
The answer is the transcript's ``text``; with ``verbose_json`` its ``language``, ``duration``,
``segments`` and ``words`` are kept parsed (export columns). Audio is billed by its length,
at least 10 seconds a request (groq-docs "Speech to Text": "Minimum Billed Length").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.policy import field_error
from jobs.template import RowRejected, _Part, check_syntax

__all__ = [
    "AUDIO_ENDPOINTS",
    "AUDIO_MODELS",
    "MIN_BILLED_AUDIO_S",
    "TRANSCRIPTIONS",
    "TRANSLATIONS",
    "VERBOSE_FIELDS",
    "AudioSpec",
    "AudioTemplates",
    "audio_seconds",
    "billed_audio_seconds",
    "is_audio",
    "transcript_text",
]

TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
AUDIO_ENDPOINTS = (TRANSCRIPTIONS, TRANSLATIONS)
AUDIO_MODELS: dict[str, tuple[str, ...]] = {
    # groq-docs "Speech to Text" → the model table: turbo has no translation support.
    TRANSCRIPTIONS: ("whisper-large-v3", "whisper-large-v3-turbo"),
    TRANSLATIONS: ("whisper-large-v3",),
}
TRANSLATION_FIELDS = frozenset({"url", "prompt", "response_format", "temperature"})
"""What ``CreateTranslationRequest`` takes besides ``model`` and ``file`` (the OpenAPI spec):
no ``language``, no ``timestamp_granularities``."""
MIN_BILLED_AUDIO_S = 10.0
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
VERBOSE_FIELDS: dict[str, Any] = {
    "language": {"type": "string"},
    "duration": {"type": "number"},
    "segments": {"type": "array", "items": {"type": "object"}},
    "words": {"type": "array", "items": {"type": "object"}},
}
"""What a ``verbose_json`` answer keeps parsed besides ``text``, with each field's schema."""


def is_audio(endpoint: str) -> bool:
    """Whether ``endpoint`` is one of the audio endpoints."""
    return endpoint in AUDIO_ENDPOINTS


class AudioSpec(BaseModel):
    """``[audio]``: the request of an audio job (transcriptions or translations)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        min_length=1,
        description="A template over the row giving the audio's URL: an http(s) URL or a Base64 "
        "data URL (``data:audio/wav;base64,...``). A batch takes no uploaded file, only ``url``.",
    )
    language: str | None = Field(
        default=None,
        min_length=1,
        description="The audio's language, ISO-639-1 (``en``, ``tr``): better accuracy and "
        "latency. A template over the row (``{{ lang }}``). Transcriptions only.",
    )
    prompt: str | None = Field(
        default=None,
        max_length=896,
        description="Text to guide the style or spelling (in the audio's language; in English "
        "for translations). A template over the row.",
    )
    response_format: Literal["json", "text", "verbose_json"] | None = Field(
        default=None,
        description="``json`` (Groq's default), ``text``, or ``verbose_json`` (segments with "
        "start/end times, kept parsed).",
    )
    temperature: float | None = Field(
        default=None, ge=0, le=1, description="Sampling temperature, 0 to 1 (Groq's default 0)."
    )
    timestamp_granularities: list[Literal["segment", "word"]] | None = Field(
        default=None,
        min_length=1,
        max_length=2,
        description="``segment`` and/or ``word`` timestamps; needs ``response_format = "
        '"verbose_json"``. Transcriptions only.',
    )

    @field_validator("url", "prompt", "language", mode="after")
    @classmethod
    def _templates_parse(cls, value: str | None) -> str | None:
        if value is not None:
            check_syntax(value)
        return value

    @field_validator("language", mode="after")
    @classmethod
    def _iso_639_1(cls, value: str | None) -> str | None:
        if value is not None and "{" not in value and not _LANGUAGE.match(value):
            raise ValueError(f"{value!r} is not an ISO-639-1 language code such as 'en'")
        return value

    @model_validator(mode="after")
    def _timestamps_need_verbose_json(self) -> AudioSpec:
        if self.timestamp_granularities is not None and self.response_format != "verbose_json":
            raise field_error(
                "timestamp_granularities",
                'timestamp_granularities needs response_format = "verbose_json"',
            )
        return self

    def check_fields(self, endpoint: str) -> None:
        """Raise a config-field error for a field set here that ``endpoint`` does not take."""
        if endpoint == TRANSLATIONS:
            for name in sorted(set(type(self).model_fields) - TRANSLATION_FIELDS):
                if getattr(self, name) is not None:
                    raise field_error(
                        name, f"{TRANSLATIONS} does not take {name} (it answers in English)"
                    )

    @staticmethod
    def check_model(endpoint: str, model: str | None) -> None:
        """Raise a config-field error if ``model`` is not one ``endpoint`` serves."""
        if model is not None and model not in AUDIO_MODELS[endpoint]:
            raise field_error(
                "model",
                f"{endpoint} serves {' and '.join(AUDIO_MODELS[endpoint])}, not {model!r}",
            )

    def constant_params(self) -> dict[str, Any]:
        """The body fields that do not depend on the row."""
        params: dict[str, Any] = {}
        for name in ("response_format", "temperature", "timestamp_granularities"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        return params


class AudioTemplates:
    """The compiled ``url`` and ``prompt`` templates of an audio job."""

    def __init__(self, spec: AudioSpec) -> None:
        self._url = _Part("audio.url", spec.url)
        self._prompt = _Part("audio.prompt", spec.prompt) if spec.prompt is not None else None
        self._language = (_Part("audio.language", spec.language)
                          if spec.language is not None else None)

    def fields(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """``url`` (and ``prompt``) for ``row``; raises :class:`RowRejected`."""
        context = {"row": row, **row}
        url = self._url.render(context).strip()
        if not url:
            raise RowRejected("audio.url rendered empty")
        if not url.startswith(("http://", "https://", "data:")):
            raise RowRejected(f"audio.url is not an http(s) URL or a data URL: {url[:60]!r}")
        fields: dict[str, Any] = {"url": url}
        if self._language is not None:
            language = self._language.render(context).strip()
            if language:  # a row with no language lets Whisper detect it
                if not _LANGUAGE.match(language):
                    raise RowRejected(f"audio.language is not an ISO-639-1 code: {language[:20]!r}")
                fields["language"] = language
        if self._prompt is not None:
            fields["prompt"] = self._prompt.render(context)
        return fields


def transcript_text(body: Any) -> str | None:
    """The text of a transcription or translation answer: a body ``{"text": ...}`` (``json``,
    ``verbose_json``), or the text itself (``response_format = "text"``)."""
    if isinstance(body, str):
        return body
    if isinstance(body, Mapping) and isinstance(body.get("text"), str) and "choices" not in body:
        text: str = body["text"]
        return text
    return None


def audio_seconds(body: Any) -> float:
    """The audio length an answer reports: ``usage.seconds`` (``{"type": "duration"}``), else a
    ``verbose_json`` ``duration``; 0 when it says neither."""
    if not isinstance(body, Mapping):
        return 0.0
    usage = body.get("usage")
    for value in (usage.get("seconds") if isinstance(usage, Mapping) else None, body.get("duration")):
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        if isinstance(value, str):
            try:
                return max(float(value), 0.0)
            except ValueError:
                continue
    return 0.0


def billed_audio_seconds(body: Any) -> float:
    """Seconds billed for one answer: its length rounded up, at least 10 seconds."""
    return max(MIN_BILLED_AUDIO_S, float(math.ceil(audio_seconds(body))))
