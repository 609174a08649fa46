"""Prompt templating: row values pass through untouched; bad rows are rejected, not raised."""

from __future__ import annotations

import pytest

from jobs.template import PromptTemplates, RowRejected


def user_text(template: str, row: dict[str, object]) -> str:
    messages = PromptTemplates(system=None, user=template, images=[]).messages(row)
    content = messages[-1]["content"]
    assert isinstance(content, str)
    return content


@pytest.mark.parametrize(
    "value",
    [
        "{",
        "}",
        "{{",
        "}}",
        "{{ x }}",
        "{% if %}",
        "{# c #}",
        "${x} %s {0}",
        "\\n",
        "{{ ''.__class__ }}",
    ],
)
def test_braces_and_template_syntax_in_values_pass_through(value: str) -> None:
    assert user_text("<{{ v }}>", {"v": value}) == f"<{value}>"


def test_text_without_markup_is_sent_as_is() -> None:
    assert user_text("literal { brace and } more", {}) == "literal { brace and } more"


def test_unicode_and_no_html_escaping() -> None:
    value = "Zoë ☃ 日本語 🎉 <b>&amp;</b> \"q\" 'a'"
    assert user_text("{{ v }}", {"v": value}) == value


def test_trailing_newline_kept() -> None:
    assert user_text("{{ v }}\n", {"v": "x"}) == "x\n"


def test_huge_row() -> None:
    value = "x" * 5_000_000
    assert len(user_text("{{ v }}", {"v": value})) == 5_000_000


def test_columns_that_are_not_identifiers_via_row() -> None:
    assert user_text('{{ row["product name"] }}', {"product name": "Lamp"}) == "Lamp"


def test_missing_column_rejects_the_row() -> None:
    with pytest.raises(RowRejected, match="missing column: 'title' is undefined"):
        user_text("{{ title }}", {"name": "x"})


def test_missing_key_via_row_rejects_the_row() -> None:
    with pytest.raises(RowRejected, match="missing column"):
        user_text('{{ row["nope"] }}', {"name": "x"})


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ v.__init__.__globals__ }}",
        "{{ row.items.__self__.__class__ }}",
    ],
)
def test_sandbox_blocks_attribute_access(template: str) -> None:
    with pytest.raises(RowRejected) as info:
        user_text(template, {"v": "x"})
    assert "unsafe" in info.value.reason


def test_error_inside_template_rejects_with_reason() -> None:
    with pytest.raises(RowRejected, match="user: ZeroDivisionError"):
        user_text("{{ n / 0 }}", {"n": 1})


def test_reason_is_bounded() -> None:
    with pytest.raises(RowRejected) as info:
        user_text("{{ v[" + "'x' * 1000" + "] }}", {"v": {}})
    assert len(info.value.reason) <= 500


def test_system_and_images() -> None:
    templates = PromptTemplates(
        system="Describe in {{ lang }}.",
        user="What is in the picture?",
        images=["{{ url }}", "{{ second or '' }}"],
    )
    messages = templates.messages({"lang": "French", "url": " https://x/1.png ", "second": None})
    assert messages == [
        {"role": "system", "content": "Describe in French."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in the picture?"},
                {"type": "image_url", "image_url": {"url": "https://x/1.png"}},
            ],
        },
    ]


@pytest.mark.parametrize("value", [None, 0, 1.5, 1e20, True, [1, "a"], {"k": "v"}, "", "ü"])
def test_plain_fast_path_renders_like_jinja(value: object) -> None:
    fast = user_text("a {{ v }} b {{ w }}", {"v": value, "w": "x"})
    slow = user_text("a {{ v | string }} b {{ w }}", {"v": value, "w": "x"})
    assert fast == slow


def test_globals_still_reachable_when_not_a_column() -> None:
    assert user_text("{% for i in range(3) %}{{ i }}{% endfor %}", {}) == "012"
