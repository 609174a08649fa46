"""A column holding a whole conversation: ``[prompt] messages = "{{ conversation }}"``.

The value is a list of chat messages (JSONL), or the same list as JSON text (a CSV cell). Each
row's list is checked against the shapes Groq's chat completions accept, so a bad row is
rejected with a reason naming the message and field, not sent to fail as a 400::

    >>> check_messages([{"role": "user", "content": "hi"}])
    [{'role': 'user', 'content': 'hi'}]
    >>> check_messages('[{"role": "bot", "content": "hi"}]')
    Traceback (most recent call last):
    ...
    jobs.template.RowRejected: messages[0].role: 'bot' is not one of system, developer, user, assistant, tool

Rules (Groq's OpenAPI, ``ChatCompletionRequestMessage``): ``system``/``developer`` and ``user``
messages need ``content``, a string or a non-empty list of parts; ``user`` and ``tool`` parts
are ``text`` or ``image_url``, the others' ``text`` only; an ``assistant`` message needs
``content`` or ``tool_calls``; a ``tool`` message needs ``tool_call_id``. No other keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from jobs.template import RowRejected

__all__ = ["ROLES", "check_messages"]

ROLES = ("system", "developer", "user", "assistant", "tool")
_KEYS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "reasoning"},
    "tool": {"role", "content", "tool_call_id"},
}
_IMAGE_ROLES = frozenset({"user", "tool"})


def check_messages(value: Any) -> list[dict[str, Any]]:
    """``value`` as a list of chat messages, checked; raises :class:`RowRejected` naming the
    first thing wrong (``messages[2].content[0].type: …``)."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise RowRejected(f"messages: the column holds text that is not JSON ({exc})") from None
    if not isinstance(value, list):
        raise RowRejected(f"messages: expected a list of messages, got {_kind(value)}")
    if not value:
        raise RowRejected("messages: the list is empty")
    return [_message(item, f"messages[{index}]") for index, item in enumerate(value)]


def _message(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise RowRejected(f"{where}: expected an object, got {_kind(item)}")
    role = item.get("role")
    if role not in _KEYS:
        raise RowRejected(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
    for key in item:
        if key not in _KEYS[role]:
            allowed = ", ".join(sorted(_KEYS[role]))
            raise RowRejected(f"{where}.{key}: not a field of a {role} message ({allowed})")
    content = item.get("content")
    if role == "assistant":
        calls = item.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and calls):
            raise RowRejected(f"{where}.tool_calls: expected a non-empty list")
        if content is None:
            if calls is None:
                raise RowRejected(f"{where}.content: an assistant message needs content or tool_calls")
        else:
            _content(content, f"{where}.content", images=False)
    else:
        if "content" not in item:
            raise RowRejected(f"{where}.content: missing")
        _content(content, f"{where}.content", images=role in _IMAGE_ROLES)
    if role == "tool" and not isinstance(item.get("tool_call_id"), str):
        raise RowRejected(f"{where}.tool_call_id: a tool message needs the id of the call it answers")
    if "name" in item and not isinstance(item["name"], str):
        raise RowRejected(f"{where}.name: expected a string")
    return dict(item)


def _content(content: Any, where: str, *, images: bool) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        raise RowRejected(f"{where}: expected a string or a non-empty list of parts, got "
                          f"{_kind(content)}")
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise RowRejected(f"{at}.text: expected a string")
        elif kind == "image_url" and images:
            image = part.get("image_url")
            if not isinstance(image, Mapping) or not isinstance(image.get("url"), str):
                raise RowRejected(f"{at}.image_url.url: expected a string")
        else:
            wanted = "text or image_url" if images else "text"
            raise RowRejected(f"{at}.type: {kind!r} is not a part this message takes ({wanted})")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
