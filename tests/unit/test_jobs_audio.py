"""Audio job configs (validation naming the line), their requests and batch lines, and what
counts as a transcript answer."""

from __future__ import annotations

import textwrap
from pathlib import Path

import orjson
import pytest

from jobs import RequestBuilder, load_job, load_prices, plan_job, price_for
from jobs.answers import judge_answer
from jobs.audio import billed_audio_seconds, transcript_text
from jobs.outputs import OutputValidator, answer_content
from jobs.requests import batch_line, custom_id_for
from jobs.template import RowRejected
from pipeline.errors import ConfigError
from tests.audio import make_calls, wav_data_url

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

AUDIO_TOML = """\
name = "calls"
endpoint = "/v1/audio/transcriptions"
model = "whisper-large-v3-turbo"

[input]
path = "rows.jsonl"

[audio]
url = "{{ audio_url }}"
language = "en"
response_format = "verbose_json"
timestamp_granularities = ["segment", "word"]
"""


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(path) in str(info.value)
    return info.value


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return load_job(path)


def test_the_shipped_transcribe_config_is_an_audio_job_on_generated_wavs() -> None:
    spec = load_job(CONFIGS / "transcribe.toml")
    assert spec.backend == "local"
    assert spec.endpoint == "/v1/audio/transcriptions"
    assert spec.audio is not None
    assert spec.audio.response_format == "verbose_json"
    # the data file is exactly what the generator script writes: nothing hand-made, no network
    assert spec.input_path.read_text(encoding="utf-8") == make_calls.lines()


def test_a_good_audio_config_builds_groq_request_bodies(tmp_path: Path) -> None:
    spec = load_job_text(tmp_path, AUDIO_TOML)
    builder = RequestBuilder(spec)
    url = wav_data_url(0.5)
    body = builder.body({"audio_url": url})
    assert body == {"model": "whisper-large-v3-turbo", "url": url, "language": "en",
                    "response_format": "verbose_json",
                    "timestamp_granularities": ["segment", "word"]}
    built = builder.build({"audio_url": url})
    assert built.custom_id == custom_id_for(built.body, endpoint="/v1/audio/transcriptions")
    assert built.custom_id != custom_id_for(built.body)  # the endpoint is part of the id
    line = orjson.loads(batch_line(built.custom_id, built.body, builder.endpoint))
    assert line["url"] == "/v1/audio/transcriptions"
    assert line["body"] == body
    assert built.line_bytes == len(batch_line(built.custom_id, built.body, builder.endpoint))


def test_row_templates_for_language_and_prompt(tmp_path: Path) -> None:
    text = AUDIO_TOML.replace('language = "en"', 'language = "{{ lang }}"\nprompt = "About {{ topic }}"')
    builder = RequestBuilder(load_job_text(tmp_path, text))
    body = builder.body({"audio_url": "https://example.com/a.wav", "lang": "fr", "topic": "billing"})
    assert (body["language"], body["prompt"]) == ("fr", "About billing")
    assert "language" not in builder.body({"audio_url": "https://x.test/a.wav", "lang": "",
                                           "topic": "x"})
    with pytest.raises(RowRejected, match="ISO-639-1"):
        builder.body({"audio_url": "https://x.test/a.wav", "lang": "French", "topic": "x"})
    with pytest.raises(RowRejected, match="not an http"):
        builder.body({"audio_url": "/tmp/a.wav", "lang": "fr", "topic": "x"})


def load_job_text(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return load_job(path)


@pytest.mark.parametrize(("change", "line", "field", "words"), [
    (("whisper-large-v3-turbo", "llama-3.1-8b-instant"), 3, "model", "serves"),
    (('response_format = "verbose_json"', 'response_format = "json"'), 12,
     "audio.timestamp_granularities", "verbose_json"),
    (('language = "en"', 'language = "english"'), 10, "audio.language", "ISO-639-1"),
    (('url = "{{ audio_url }}"', 'url = "{{ audio_url }}"\nfile = "a.wav"'), 10, "audio.file",
     "unknown key"),
])
def test_bad_audio_configs_name_the_line(tmp_path: Path, change: tuple[str, str], line: int,
                                         field: str, words: str) -> None:
    error = load_error(tmp_path, AUDIO_TOML.replace(*change))
    assert (error.line, error.field) == (line, field), str(error)
    assert words in error.message


def test_translations_take_no_language_and_no_turbo(tmp_path: Path) -> None:
    translating = AUDIO_TOML.replace("transcriptions", "translations")
    error = load_error(tmp_path, translating)
    assert (error.line, error.field) == (10, "audio.language"), str(error)
    assert "does not take language" in error.message
    no_language = translating.replace('language = "en"\n', "")
    error = load_error(tmp_path, no_language)
    assert (error.line, error.field) == (11, "audio.timestamp_granularities"), str(error)
    plain = no_language.replace('timestamp_granularities = ["segment", "word"]\n', "")
    error = load_error(tmp_path, plain)
    assert (error.line, error.field) == (3, "model"), str(error)
    assert "whisper-large-v3" in error.message
    spec = load_job_text(tmp_path, plain.replace("-turbo", ""))
    assert spec.endpoint == "/v1/audio/translations"


def test_audio_and_prompt_tables_go_with_their_endpoints(tmp_path: Path) -> None:
    error = load_error(tmp_path, AUDIO_TOML + '[prompt]\nuser = "hi"\n')
    assert error.field == "prompt"
    error = load_error(tmp_path, AUDIO_TOML.replace('endpoint = "/v1/audio/transcriptions"\n', ""))
    assert error.field == "audio"
    assert "endpoint" in error.message
    chat_without_prompt = 'name = "c"\nmodel = "llama-3.1-8b-instant"\n[input]\npath = "r.jsonl"\n'
    assert load_error(tmp_path, chat_without_prompt).field == "prompt"
    error = load_error(tmp_path, AUDIO_TOML.replace('endpoint = "/v1/audio/transcriptions"',
                                                    'endpoint = "/v1/embeddings"'))
    assert (error.line, error.field) == (2, "endpoint")


def test_transcripts_are_answers_and_chat_bodies_are_not() -> None:
    endpoint = "/v1/audio/transcriptions"
    assert judge_answer({"text": "hello there"}, endpoint) == ({"text": "hello there"}, None)
    assert judge_answer("hello there", endpoint) == ({"text": "hello there"}, None)  # text format
    assert judge_answer('{"text": "hi"}', endpoint) == ({"text": "hi"}, None)
    assert judge_answer('"hi there"', endpoint) == ({"text": "hi there"}, None)  # sent as a string
    assert judge_answer({"choices": [{"message": {"content": "x"}}]}, endpoint)[1] is not None
    assert judge_answer(None, endpoint)[1] is not None
    assert judge_answer({"text": "hi"})[1] is not None  # a chat job wants a chat completion
    assert transcript_text({"text": "a", "choices": []}) is None
    assert answer_content({"text": "spoken words"}) == "spoken words"


def test_audio_is_billed_by_seconds_at_least_ten() -> None:
    assert billed_audio_seconds({"text": "x", "usage": {"type": "duration", "seconds": 3}}) == 10
    assert billed_audio_seconds({"text": "x", "usage": {"type": "duration", "seconds": 61.2}}) == 62
    assert billed_audio_seconds({"text": "x", "duration": 12.5}) == 13
    assert billed_audio_seconds({"text": "x"}) == 10


def test_verbose_json_fields_are_kept_parsed(tmp_path: Path) -> None:
    validator = OutputValidator.for_job(load_job_text(tmp_path, AUDIO_TOML))
    assert validator is not None
    assert validator.fields == ("language", "duration", "segments", "words")
    body = {"text": "hi", "language": "english", "duration": 1.5,
            "segments": [{"start": 0, "end": 1.5, "text": " hi"}], "x_groq": {"id": "req_1"}}
    verdict = validator.judge(body)
    assert verdict.invalid is None
    assert orjson.loads(verdict.parsed or "null") == {
        "language": "english", "duration": 1.5, "segments": body["segments"]}
    plain = OutputValidator.for_job(load_job_text(tmp_path, AUDIO_TOML.replace(
        'response_format = "verbose_json"\ntimestamp_granularities = ["segment", "word"]\n', "")))
    assert plain is not None
    assert plain.fields == ()
    assert plain.judge({"text": "hi"}).parsed is None


def test_a_plan_prices_audio_at_its_minimum_billed_length(tmp_path: Path) -> None:
    spec = load_job(CONFIGS / "transcribe.toml").model_copy(
        update={"ledger": str(tmp_path / "plan.sqlite"), "workdir": str(tmp_path / "work")})
    plan = plan_job(spec, None)
    price = price_for("whisper-large-v3-turbo", load_prices())
    assert price is not None
    assert plan.compile.to_send == 6
    assert plan.cost_batch_usd == pytest.approx(price.audio_cost(60, "batch"))
    assert plan.cost_on_demand_usd == pytest.approx(2 * plan.cost_batch_usd)
    assert any("billed by its length" in warning for warning in plan.warnings)
