"""``[prompt] messages``: a column holding a conversation, checked row by row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from jobs import load_job
from jobs.compile import compile_job
from jobs.conversation import check_messages
from jobs.requests import RequestBuilder
from jobs.template import PromptTemplates, RowRejected
from pipeline.errors import ConfigError
from state import Ledger

CHAT = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": [{"type": "text", "text": "hi"},
                                 {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
    {"role": "assistant", "content": [{"type": "text", "text": "It is 42."}]},
    {"role": "user", "content": "thanks", "name": "ada"},
]


def test_a_good_conversation_passes_whole() -> None:
    assert check_messages(CHAT) == CHAT
    assert check_messages(orjson.dumps(CHAT).decode()) == CHAT  # a CSV cell: JSON text


@pytest.mark.parametrize(("value", "reason"), [
    ("not json", "messages: the column holds text that is not JSON"),
    ({"role": "user"}, "messages: expected a list of messages, got an object"),
    ([], "messages: the list is empty"),
    (["hi"], "messages[0]: expected an object, got a string"),
    ([{"role": "bot", "content": "x"}], "messages[0].role: 'bot' is not one of system, developer, "
                                        "user, assistant, tool"),
    ([{"role": "user"}], "messages[0].content: missing"),
    ([{"role": "user", "content": 3}], "messages[0].content: expected a string or a non-empty "
                                       "list of parts, got a number"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": []}],
     "messages[1].content: expected a string or a non-empty list of parts, got a list"),
    ([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}],
     "messages[0].content[0].type: 'image_url' is not a part this message takes (text)"),
    ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text: expected a string"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
     "messages[0].content[0].image_url.url: expected a string"),
    ([{"role": "user", "content": "a", "timestamp": 1}],
     "messages[0].timestamp: not a field of a user message (content, name, role)"),
    ([{"role": "assistant"}], "messages[0].content: an assistant message needs content or tool_calls"),
    ([{"role": "assistant", "tool_calls": []}], "messages[0].tool_calls: expected a non-empty list"),
    ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id: a tool message needs the id"),
    ([{"role": "user", "content": "x", "name": 5}], "messages[0].name: expected a string"),
])
def test_a_bad_conversation_is_rejected_naming_message_and_field(value: Any, reason: str) -> None:
    with pytest.raises(RowRejected) as caught:
        check_messages(value)
    assert caught.value.reason.startswith(reason), caught.value.reason


def test_templates_take_the_column_as_is_with_the_system_prompt_first() -> None:
    templates = PromptTemplates(system="Rules for {{ id }}.", user=None, images=[],
                                messages="{{ conversation }}")
    row = {"id": "a", "conversation": CHAT[1:2]}
    assert templates.messages(row) == [{"role": "system", "content": "Rules for a."}, CHAT[1]]
    # row["..."] for a column name that is not an identifier; JSON text from a CSV cell
    quoted = PromptTemplates(system=None, user=None, images=[], messages='{{ row["the chat"] }}')
    assert quoted.messages({"the chat": '[{"role": "user", "content": "x"}]'}) == [
        {"role": "user", "content": "x"}]
    with pytest.raises(RowRejected, match="missing column: 'conversation' is undefined"):
        templates.messages({"id": "a"})
    # more than one expression renders to text, which must then be JSON
    text = PromptTemplates(system=None, user=None, images=[],
                           messages='[{"role": "user", "content": "{{ q }}"}]')
    assert text.messages({"q": "why"}) == [{"role": "user", "content": "why"}]


def write(folder: Path, prompt: str, rows: str, suffix: str = "jsonl") -> Path:
    (folder / f"rows.{suffix}").write_text(rows)
    config = folder / "job.toml"
    config.write_text(f'name = "chat"\nmodel = "llama-3.1-8b-instant"\n[input]\n'
                      f'path = "rows.{suffix}"\nid_column = "id"\n[prompt]\n{prompt}')
    return config


def test_config_takes_user_or_messages_not_both(tmp_path: Path) -> None:
    row = '{"id": 1, "c": [{"role": "user", "content": "x"}]}\n'
    assert load_job(write(tmp_path, 'messages = "{{ c }}"\n', row)).prompt.messages == "{{ c }}"
    for prompt, field in [('messages = "{{ c }}"\nuser = "x"\n', "prompt.messages"),
                          ('messages = "{{ c }}"\nimages = ["{{ u }}"]\n', "prompt.images"),
                          ('system = "s"\n', "prompt.user"),
                          ('messages = "{{ c "\n', "prompt.messages")]:
        with pytest.raises(ConfigError) as caught:
            load_job(write(tmp_path, prompt, row))
        assert caught.value.field == field, (prompt, caught.value)


def test_compile_sends_each_conversation_and_records_bad_rows_with_their_reason(
    tmp_path: Path,
) -> None:
    good = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "bye"}]
    rows = (orjson.dumps({"id": "ok", "c": good}) + b"\n"
            + orjson.dumps({"id": "bad", "c": [{"role": "bot", "content": "x"}]}) + b"\n")
    config = write(tmp_path, 'system = "Be brief."\nmessages = "{{ c }}"\n', rows.decode())
    spec = load_job(config)
    body = RequestBuilder(spec).body({"id": "ok", "c": good})
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, *good]
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        report = compile_job(spec, ledger)
        assert (report.rows, report.ok, report.rejected) == (2, 1, 1)
        rejected = ledger.rejected_rows("chat", 5)
    assert [(key, reason) for key, _index, reason in rejected] == [
        ("bad", "messages[0].role: 'bot' is not one of system, developer, user, assistant, tool")]


def test_a_csv_cell_holds_the_conversation_as_json(tmp_path: Path) -> None:
    rows = ('id,chat\n1,"[{""role"": ""user"", ""content"": ""hi""}]"\n'
            '2,not a list\n')
    spec = load_job(write(tmp_path, 'messages = "{{ chat }}"\n', rows, "csv"))
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        report = compile_job(spec, ledger)
        rejected = ledger.rejected_rows("chat", 5)
    assert (report.ok, report.rejected) == (1, 1)
    assert rejected[0][0] == "2"
    assert rejected[0][2].startswith("messages: the column holds text that is not JSON")
