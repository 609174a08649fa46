"""Scoring one answer against its reference: the scorers of ``[evaluate]``, as functions.

    scorer = build_scorer(RegexScorer(kind="regex", pattern=r"\\bParis\\b"), default_reference="ref")
    scorer.score("It is Paris.", None, row)      # -> 1.0

Every score is a float in [0, 1]. The rules, for every kind:

- ``answer is None`` (the request failed, or its answer has no text) scores 0 — a callable is
  not called for it.
- a scorer that needs the reference (all but ``regex`` with a ``pattern``, and ``callable``)
  gives ``None`` — *not scored*, left out of the mean — when the row has no reference
  (missing, null or empty).
- ``exact``: both sides stripped of surrounding whitespace, then equal.
- ``normalized``: Unicode NFKC, case-folded, punctuation turned into spaces, runs of
  whitespace collapsed; then equal. ``"  Paris."`` equals ``"paris"``.
- ``regex``: ``re.search`` (or ``fullmatch`` of the stripped answer). A row's reference used
  as the pattern that does not compile scores 0 for that row.
- ``json_field``: the answer (or the first fenced ```json block in it) parsed as JSON; the
  value at ``field`` equals the reference: equal values, equal numbers (``3 == "3.0"``), or
  equal text once stripped. Unparseable answers and missing fields score 0.
- ``numeric``: the first number in the answer (``1,234.5``, ``-3e2``, ``.5``) within
  ``tolerance`` of the reference (a number, or text holding one). No number scores 0.
- ``callable``: ``bool`` → 1/0; a number must be within [0, 1]. Anything else, or an exception
  raised by the function, is a :class:`ScorerError`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from jobs.evaluate import (
    CallableScorer,
    ExactScorer,
    JsonFieldScorer,
    NormalizedScorer,
    NumericScorer,
    RegexScorer,
    ScorerSpec,
)

__all__ = [
    "Scorer",
    "ScorerError",
    "build_scorer",
    "first_number",
    "normalize_text",
]

_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
)
_FENCED_JSON = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


class ScorerError(ValueError):
    """A ``callable`` scorer raised or returned something other than a bool or a number in
    [0, 1]. The evaluation stage reports it as a config error naming the scorer and the row."""


def normalize_text(text: str) -> str:
    """NFKC, case-folded, punctuation → space, whitespace collapsed and stripped."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in folded)
    return _WHITESPACE.sub(" ", spaced).strip()


def first_number(value: Any) -> float | None:
    """A number, or the first number written in a text (thousands commas allowed); else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    match = _NUMBER.search(str(value))
    if match is None:
        return None
    try:
        number = float(match[0].replace(",", ""))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _missing(reference: Any) -> bool:
    return reference is None or (isinstance(reference, str) and not reference.strip())


def _json_value(answer: str) -> Any:
    fenced = _FENCED_JSON.search(answer)
    text = fenced[1] if fenced else answer
    try:
        return orjson.loads(text.strip())
    except orjson.JSONDecodeError:
        return _NO_VALUE


_NO_VALUE = object()


def _at_path(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _NO_VALUE
    return value


def _same_value(got: Any, reference: Any) -> bool:
    if got is _NO_VALUE:
        return False
    if got == reference and type(got) is type(reference):
        return True
    got_n, ref_n = first_number(got), first_number(reference)
    if (
        got_n is not None
        and ref_n is not None
        and _is_plain_number(got)
        and _is_plain_number(reference)
    ):
        return got_n == ref_n
    if isinstance(got, dict | list) or isinstance(reference, dict | list):
        return bool(got == reference)
    return _text(got) == _text(reference)


def _is_plain_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and bool(re.fullmatch(r"\s*" + _NUMBER.pattern + r"\s*", value))


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


@dataclass(frozen=True, slots=True)
class Scorer:
    """One configured scorer: its ``name``, ``kind``, the reference column it reads, and
    :meth:`score`."""

    spec: ScorerSpec
    reference_column: str

    @property
    def name(self) -> str:
        return self.spec.label

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def needs_reference(self) -> bool:
        spec = self.spec
        if isinstance(spec, RegexScorer):
            return spec.pattern is None
        return not isinstance(spec, CallableScorer)

    def reference_of(self, row: Mapping[str, Any]) -> Any:
        """The row's reference for this scorer (None when the column is absent)."""
        return row.get(self.reference_column)

    def score(self, answer: str | None, reference: Any, row: Mapping[str, Any]) -> float | None:
        """The score of ``answer`` in [0, 1]; None when the row cannot be scored (no
        reference). Raises :class:`ScorerError` for a misbehaving ``callable``."""
        if self.needs_reference and _missing(reference):
            return None
        if answer is None:
            return 0.0
        spec = self.spec
        if isinstance(spec, ExactScorer):
            return float(answer.strip() == _text(reference))
        if isinstance(spec, NormalizedScorer):
            return float(normalize_text(answer) == normalize_text(_text(reference)))
        if isinstance(spec, RegexScorer):
            return _regex_score(spec, answer, reference)
        if isinstance(spec, JsonFieldScorer):
            return float(_same_value(_at_path(_json_value(answer), spec.field), reference))
        if isinstance(spec, NumericScorer):
            got, wanted = first_number(answer), first_number(reference)
            if got is None or wanted is None:
                return 0.0
            return float(abs(got - wanted) <= spec.tolerance + 1e-12 * max(1.0, abs(wanted)))
        return _call(spec, answer, reference, row)


def _regex_score(spec: RegexScorer, answer: str, reference: Any) -> float:
    flags = re.IGNORECASE if spec.ignore_case else 0
    try:
        pattern = re.compile(spec.pattern if spec.pattern is not None else _text(reference), flags)
    except re.error:
        return 0.0  # a row's reference that is not a valid pattern matches nothing
    if spec.fullmatch:
        return float(pattern.fullmatch(answer.strip()) is not None)
    return float(pattern.search(answer) is not None)


def _call(spec: CallableScorer, answer: str, reference: Any, row: Mapping[str, Any]) -> float:
    try:
        value = spec.resolved(answer, reference, dict(row))
    except Exception as exc:  # the user's code: reported with the scorer and the row
        raise ScorerError(f"{spec.function} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1:
        return float(value)
    raise ScorerError(
        f"{spec.function} returned {value!r}; expected a bool or a number in [0, 1]"
    )


def build_scorer(spec: ScorerSpec, *, default_reference: str) -> Scorer:
    """The scorer for ``spec``, reading ``spec.reference`` or else ``default_reference``."""
    return Scorer(spec, spec.reference or default_reference)
