"""The ``[evaluate]`` scorers: each kind, its edge cases, and the config checks made at load."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from jobs import load_job
from jobs.evaluate import EvaluateSpec
from jobs.scorers import Scorer, ScorerError, build_scorer, first_number, normalize_text
from pipeline.errors import ConfigError


def scorer(kind: str, *, base_dir: Path | None = None, **options: Any) -> Scorer:
    spec = EvaluateSpec.model_validate(
        {"reference": "ref", "scorers": [{"kind": kind, **options}]},
        context={"base_dir": base_dir} if base_dir else None,
    )
    return build_scorer(spec.scorers[0], default_reference=spec.reference)


def score(s: Scorer, answer: str | None, reference: Any, **row: Any) -> float | None:
    return s.score(answer, reference, {"ref": reference, **row})


def test_exact_ignores_only_surrounding_whitespace() -> None:
    exact = scorer("exact")
    assert score(exact, "Paris\n", "Paris") == 1.0
    assert score(exact, "paris", "Paris") == 0.0
    assert score(exact, "Paris.", "Paris") == 0.0
    assert score(exact, "42", 42) == 1.0  # a number reference compares as its text


def test_normalized_ignores_case_whitespace_and_punctuation() -> None:
    normalized = scorer("normalized")
    assert score(normalized, "  PARIS. ", "paris") == 1.0
    assert score(normalized, "New-York!", "new york") == 1.0
    assert score(normalized, "\uff30\uff41\uff52\uff49\uff53", "Paris") == 1.0  # NFKC: full-width letters
    assert score(normalized, "Lyon", "Paris") == 0.0
    assert normalize_text("  Hello,\tWorld!! ") == "hello world"


def test_regex_with_a_pattern_needs_no_reference() -> None:
    regex = scorer("regex", pattern=r"\bParis\b", ignore_case=True)
    assert score(regex, "It is paris, of course.", None) == 1.0
    assert score(regex, "Parisian", None) == 0.0


def test_regex_without_a_pattern_uses_the_reference_as_the_pattern() -> None:
    regex = scorer("regex")
    assert score(regex, "The capital is Paris.", "Par(is|ee)") == 1.0
    assert score(regex, "The capital is Lyon.", "Paris") == 0.0
    assert score(regex, "anything", "(unclosed") == 0.0  # a bad per-row pattern scores 0
    full = scorer("regex", pattern=r"\d+", fullmatch=True)
    assert score(full, " 42 \n", None) == 1.0
    assert score(full, "42 km", None) == 0.0


def test_json_field_compares_the_parsed_answer_field() -> None:
    field = scorer("json_field", field="city.name")
    assert score(field, '{"city": {"name": "Paris"}}', "Paris") == 1.0
    assert score(field, '```json\n{"city": {"name": "Paris"}}\n```', "Paris") == 1.0
    assert score(field, '{"city": {"name": "Lyon"}}', "Paris") == 0.0
    assert score(field, '{"city": "Paris"}', "Paris") == 0.0  # no such path
    assert score(field, "Paris", "Paris") == 0.0  # not JSON
    count = scorer("json_field", field="items.1")
    assert score(count, '{"items": [1, 3]}', "3") == 1.0  # a number equals its text
    assert score(count, '{"items": [1, 3.0]}', 3) == 1.0
    flag = scorer("json_field", field="ok")
    assert score(flag, '{"ok": true}', "true") == 1.0


def test_numeric_reads_numbers_out_of_text_within_the_tolerance() -> None:
    numeric = scorer("numeric", tolerance=0.5)
    assert score(numeric, "About 1,234.4 km.", "1234") == 1.0
    assert score(numeric, "It is -3e2 degrees", -300) == 1.0
    assert score(numeric, "12.6", "12") == 0.0
    assert score(numeric, "no number here", "12") == 0.0
    assert score(numeric, "7", "seven") is not None
    assert score(numeric, "7", "seven") == 0.0
    exact = scorer("numeric")
    assert score(exact, "The answer is 42.", 42) == 1.0
    assert first_number("v2 of 3") == 2.0
    assert first_number(".5") == 0.5
    assert first_number(True) is None


def test_a_missing_answer_scores_zero_and_a_missing_reference_is_not_scored() -> None:
    for s in (scorer("exact"), scorer("normalized"), scorer("numeric"),
              scorer("json_field", field="a"), scorer("regex")):
        assert score(s, None, "Paris") == 0.0
        assert score(s, "Paris", None) is None
        assert score(s, "Paris", "  ") is None
    assert score(scorer("regex", pattern="x"), None, None) == 0.0


def test_a_scorer_may_read_its_own_reference_column() -> None:
    spec = EvaluateSpec.model_validate(
        {"reference": "ref", "scorers": [{"kind": "exact", "reference": "alt"}]})
    s = build_scorer(spec.scorers[0], default_reference=spec.reference)
    row = {"ref": "Paris", "alt": "Lyon"}
    assert s.score("Lyon", s.reference_of(row), row) == 1.0


def write_module(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def test_callable_gets_answer_reference_and_row(tmp_path: Path) -> None:
    write_module(tmp_path, "scorers_ok", """
        def prefix(answer, reference, row):
            return answer.lower().startswith(reference.lower()) and row["lang"] == "en"

        def half(answer, reference, row):
            return 0.5
    """)
    prefix = scorer("callable", base_dir=tmp_path, function="scorers_ok:prefix")
    assert score(prefix, "Paris, France", "paris", lang="en") == 1.0
    assert score(prefix, "Paris, France", "paris", lang="fr") == 0.0
    assert score(prefix, None, "paris", lang="en") == 0.0  # not called without an answer
    half = scorer("callable", base_dir=tmp_path, function="scorers_ok:half")
    assert score(half, "x", None) == 0.5  # a callable may do without a reference


def test_callable_returning_nonsense_or_raising_is_a_scorer_error(tmp_path: Path) -> None:
    write_module(tmp_path, "scorers_bad", """
        def too_big(answer, reference, row):
            return 2

        def text(answer, reference, row):
            return "yes"

        def boom(answer, reference, row):
            raise RuntimeError("kaput")
    """)
    for name, message in (("too_big", "returned 2"), ("text", "returned 'yes'"),
                          ("boom", "RuntimeError: kaput")):
        s = scorer("callable", base_dir=tmp_path, function=f"scorers_bad:{name}")
        with pytest.raises(ScorerError, match=message):
            score(s, "answer", "ref")


JOB = """\
name = "t"
model = "llama-3.1-8b-instant"

[input]
path = "rows.jsonl"

[prompt]
user = "{{ q }}"

[evaluate]
reference = "ref"

[[evaluate.scorers]]
kind = "exact"

[[evaluate.scorers]]
%s
"""


def load_error(tmp_path: Path, scorer_lines: str) -> ConfigError:
    config = tmp_path / "job.toml"
    config.write_text(JOB % scorer_lines)
    with pytest.raises(ConfigError) as info:
        load_job(config)
    assert str(config) in str(info.value)
    return info.value


def test_a_bad_regex_is_a_config_error_naming_line_and_field(tmp_path: Path) -> None:
    error = load_error(tmp_path, 'kind = "regex"\npattern = "(unclosed"')
    assert error.field == "evaluate.scorers[1].pattern"
    assert error.line == 18
    assert "not a valid regular expression" in str(error)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("mod_here:missing", "has no function 'missing'"),
        ("mod_here:two_args", "must take three arguments"),
        ("not a reference", "not of the form 'module:function'"),
        ("mod_broken:f", "cannot import 'mod_broken': ZeroDivisionError"),
    ],
)
def test_callable_import_problems_are_config_errors_naming_the_field(
    tmp_path: Path, function: str, message: str
) -> None:
    write_module(tmp_path, "mod_here", "def two_args(a, b):\n    return 1\n")
    write_module(tmp_path, "mod_broken", "1 / 0\n")
    error = load_error(tmp_path, f'kind = "callable"\nfunction = "{function}"')
    assert error.field == "evaluate.scorers[1].function"
    assert error.line == 18
    assert message in str(error)


def test_scorer_names_must_differ_and_kinds_be_known(tmp_path: Path) -> None:
    error = load_error(tmp_path, 'kind = "exact"')
    assert "two scorers are named 'exact'" in str(error)
    assert error.field == "evaluate.scorers"
    unknown = load_error(tmp_path, 'kind = "fuzzy"')
    assert unknown.field == "evaluate.scorers[1]"
    assert "'fuzzy'" in str(unknown)
    typo = load_error(tmp_path, 'kind = "numeric"\ntolerence = 1')
    assert typo.field == "evaluate.scorers[1].tolerence"
    assert "unknown key" in str(typo)
