"""Request building and the content-addressed custom_id scheme (pinned)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.requests import (
    RequestBuilder,
    batch_line,
    canonical_json,
    custom_id_for,
    row_key_for,
)
from jobs.spec import JobSpec
from jobs.template import RowRejected

BODY = {
    "model": "llama-3.1-8b-instant",
    "messages": [{"role": "user", "content": "Hello"}],
    "temperature": 0,
}


def make_spec(tmp_path: Path, **prompt: object) -> JobSpec:
    data = {
        "name": "t",
        "model": "llama-3.1-8b-instant",
        "input": {"path": "rows.jsonl"},
        "prompt": {"user": "{{ text }}", **prompt},
    }
    return JobSpec.model_validate(data, context={"base_dir": tmp_path})


def test_custom_id_is_pinned() -> None:
    # Changing the scheme would re-send every request of every ledger: this must not move.
    body = canonical_json(BODY)
    assert body == (
        b'{"messages":[{"content":"Hello","role":"user"}],'
        b'"model":"llama-3.1-8b-instant","temperature":0}'
    )
    assert custom_id_for(body) == "gb_omdhvy4pkbnt4dqnazidoqsloy"
    assert custom_id_for(body, salt="run-1") == "gb_csodfr3ne7duzcp3apncdjl3la"


def test_custom_id_shape() -> None:
    custom_id = custom_id_for(canonical_json(BODY))
    assert len(custom_id) == 29 <= 64
    assert custom_id.startswith("gb_")
    assert set(custom_id[3:]) <= set("abcdefghijklmnopqrstuvwxyz234567")


def test_key_order_does_not_matter() -> None:
    reordered = {"temperature": 0, "messages": [{"content": "Hello", "role": "user"}]}
    reordered["model"] = "llama-3.1-8b-instant"
    assert custom_id_for(canonical_json(reordered)) == custom_id_for(canonical_json(BODY))


def test_endpoint_and_salt_change_the_id() -> None:
    body = canonical_json(BODY)
    ids = {
        custom_id_for(body),
        custom_id_for(body, salt=""),
        custom_id_for(body, salt="a"),
        custom_id_for(body, endpoint="/v1/other"),
    }
    assert len(ids) == 4


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=6), st.randoms())
def test_id_is_independent_of_insertion_order(data: dict[str, str], rnd: object) -> None:
    items = list(data.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    assert custom_id_for(canonical_json(dict(items))) == custom_id_for(canonical_json(data))


def test_batch_line_is_valid_json_of_the_documented_shape() -> None:
    body = canonical_json(BODY)
    line = batch_line("gb_x", body)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert orjson.loads(line) == {
        "custom_id": "gb_x",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": BODY,
    }


def test_builder_body_has_params_and_stable_ids(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, temperature=0.5, seed=3, stop=["\n"], response_format="json_object")
    builder = RequestBuilder(spec)
    built = builder.build({"text": "hi", "unused": 1})
    assert orjson.loads(built.body) == {
        "model": "llama-3.1-8b-instant",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
        "seed": 3,
        "stop": ["\n"],
        "response_format": {"type": "json_object"},
    }
    assert built.custom_id == custom_id_for(built.body)
    # columns the template does not use do not change the request: rows share it
    assert builder.build({"text": "hi", "unused": 2}) == built
    assert len(batch_line(built.custom_id, built.body)) == built.line_bytes


def test_builder_salt_and_model_override(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    plain = RequestBuilder(spec).build({"text": "hi"})
    salted = RequestBuilder(spec, salt="run-7").build({"text": "hi"})
    assert plain.body == salted.body
    assert plain.custom_id != salted.custom_id
    lora = RequestBuilder(spec, model="ft:llama-3.1-8b-instant:org:x").build({"text": "hi"})
    assert orjson.loads(lora.body)["model"] == "ft:llama-3.1-8b-instant:org:x"


def test_builder_rejects_oversized_requests(tmp_path: Path) -> None:
    builder = RequestBuilder(make_spec(tmp_path), max_line_bytes=2000)
    builder.build({"text": "x" * 1000})
    with pytest.raises(RowRejected, match="over max_bytes_per_shard"):
        builder.build({"text": "x" * 2000})


def test_adapter_needs_resolving(tmp_path: Path) -> None:
    data = {"name": "t", "adapter": "a", "input": {"path": "r.jsonl"}, "prompt": {"user": "x"}}
    spec = JobSpec.model_validate(data)
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="must be resolved"):
        RequestBuilder(spec)


def test_row_keys() -> None:
    assert row_key_for({"id": 7, "x": 1}, "id") == "7"
    assert row_key_for({"b": 1, "a": 2}, None) == row_key_for({"a": 2, "b": 1}, None)
    assert row_key_for({"a": 1}, None) != row_key_for({"a": 2}, None)
    assert row_key_for({"a": 1}, None).startswith("h_")
    with pytest.raises(RowRejected, match="id column 'id'"):
        row_key_for({"x": 1}, "id")
    with pytest.raises(RowRejected):
        row_key_for({"id": ""}, "id")
