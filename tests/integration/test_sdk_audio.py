"""The official ``groq`` and ``openai`` SDKs against the local server's synchronous audio
endpoints (a loopback port): transcriptions and translations by ``url`` (a WAV data URL) and
by uploaded ``file``, every response format, and Groq's refusals."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import groq
import openai
import pytest

from pipeline.emulator.audio import wav_duration_s
from pipeline.emulator.serve import ThreadedServer
from tests.audio import wav_bytes, wav_data_url
from tests.conftest import API_KEY


@pytest.fixture
def groq_client(server: ThreadedServer) -> Iterator[groq.Groq]:
    with groq.Groq(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
        yield client


@pytest.fixture
def openai_client(server: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=API_KEY, base_url=server.url + "/openai/v1", max_retries=0) as client:
        yield client


def test_groq_transcribes_a_wav_data_url_with_its_real_duration(groq_client: groq.Groq) -> None:
    url = wav_data_url(2.4)
    raw = groq_client.audio.transcriptions.with_raw_response.create(
        url=url, model="whisper-large-v3-turbo", response_format="verbose_json",
        timestamp_granularities=["word", "segment"], language="en")
    transcription = raw.parse()
    extra: dict[str, Any] = transcription.model_extra or {}
    assert extra["duration"] == 2.4
    assert extra["language"] == "english"
    assert extra["x_groq"]["id"] == raw.headers["x-request-id"]
    assert extra["usage"] == {"type": "duration", "seconds": 3}
    segments = extra["segments"]
    assert segments[0]["start"] == 0
    assert segments[-1]["end"] == 2.4
    assert all(s["start"] < s["end"] for s in segments)
    assert "".join(s["text"] for s in segments).strip() == transcription.text
    assert extra["words"][-1]["end"] == 2.4
    again = groq_client.audio.transcriptions.create(url=url, model="whisper-large-v3-turbo",
                                                    language="en")
    assert again.text == transcription.text  # the same audio, the same words


def test_a_different_recording_gets_a_different_transcript(groq_client: groq.Groq) -> None:
    first = groq_client.audio.transcriptions.create(url=wav_data_url(1.0, tone_hz=440),
                                                    model="whisper-large-v3")
    second = groq_client.audio.transcriptions.create(url=wav_data_url(1.0, tone_hz=880),
                                                     model="whisper-large-v3")
    assert first.text != second.text


def test_text_format_answers_plain_text(groq_client: groq.Groq) -> None:
    raw = groq_client.audio.transcriptions.with_raw_response.create(
        url=wav_data_url(1.0), model="whisper-large-v3", response_format="text")
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.http_response.text.endswith(".")


def test_groq_translates_with_whisper_large_v3_only(groq_client: groq.Groq) -> None:
    translation = groq_client.audio.translations.create(
        url=wav_data_url(1.5), model="whisper-large-v3", response_format="verbose_json")
    assert (translation.model_extra or {})["language"] == "english"
    assert (translation.model_extra or {})["task"] == "translate"
    with pytest.raises(groq.BadRequestError, match="does not support translations"):
        groq_client.audio.translations.create(url=wav_data_url(1.5), model="whisper-large-v3-turbo")


def test_openai_uploads_a_file(openai_client: openai.OpenAI) -> None:
    audio = wav_bytes(3.0)
    assert wav_duration_s(audio) == 3.0
    transcription = openai_client.audio.transcriptions.create(
        file=("call.wav", audio, "audio/wav"), model="whisper-large-v3",
        response_format="verbose_json", timestamp_granularities=["segment"])
    assert transcription.duration == 3.0
    assert transcription.segments is not None
    assert transcription.segments[-1].end == 3.0
    again = openai_client.audio.transcriptions.create(
        file=("call.wav", audio, "audio/wav"), model="whisper-large-v3")
    assert again.text == transcription.text


def test_refusals_name_the_parameter(groq_client: groq.Groq) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "whisper-large-v3", "url": wav_data_url(1.0), "response_format": "json",
          "timestamp_granularities": ["word"]}, "verbose_json"),
        ({"model": "llama-3.1-8b-instant", "url": wav_data_url(1.0)}, "does not support"),
        ({"model": "whisper-large-v3", "url": "ftp://example.com/a.wav"}, "http"),
        ({"model": "whisper-large-v3", "url": "data:audio/wav;base64,@@@"}, "base64"),
        ({"model": "whisper-large-v3", "url": wav_data_url(0.005)}, "too short"),
        ({"model": "whisper-large-v3", "url": wav_data_url(1.0), "temperature": 1.5}, "temperature"),
    ]
    for fields, message in cases:
        with pytest.raises(groq.BadRequestError, match=message):
            groq_client.audio.transcriptions.create(**fields)
    with pytest.raises(groq.NotFoundError):
        groq_client.audio.transcriptions.create(model="whisper-9", url=wav_data_url(1.0))


def test_a_data_url_in_base64url_is_read(groq_client: groq.Groq) -> None:
    raw = base64.urlsafe_b64encode(wav_bytes(1.25)).decode().rstrip("=")
    transcription = groq_client.audio.transcriptions.create(
        url=f"data:audio/wav;base64,{raw}", model="whisper-large-v3", response_format="verbose_json")
    assert (transcription.model_extra or {})["duration"] == 1.25
