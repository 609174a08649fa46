"""The ``[evaluate]`` table of a job: score each answer against a reference column.

    [evaluate]
    reference = "reference"                        # the input column holding the expected answer

    [[evaluate.scorers]]
    kind = "exact"                                 # answer == reference (surrounding space ignored)

    [[evaluate.scorers]]
    kind = "normalized"                            # ignoring case, whitespace and punctuation

    [[evaluate.scorers]]
    kind = "regex"                                 # the answer matches `pattern`; without one,
    name = "mentions_reference"                    # the row's reference is the pattern
    ignore_case = true

    [[evaluate.scorers]]
    kind = "json_field"                            # the answer parsed as JSON: its `field`
    field = "city.name"                            # (a dotted path) equals the reference

    [[evaluate.scorers]]
    kind = "numeric"                               # |first number in answer - reference|
    tolerance = 0.5                                # <= tolerance

    [[evaluate.scorers]]
    kind = "callable"                              # your function(answer, reference, row)
    function = "my_scorers:close_enough"           # -> bool or a float in [0, 1]

Every scorer has an optional ``name`` (default: its ``kind``; names must differ) and an
optional ``reference`` column of its own (default: the table's). Everything is checked when
the config loads: a regex that does not compile, a ``function`` that cannot be imported (the
config's folder is searched first) or does not take ``(answer, reference, row)`` is a
:class:`~pipeline.errors.ConfigError` naming the file, the line and the field.

How answers are scored is in :mod:`jobs.scorers`; when, in :mod:`pipeline.evaluate`.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from jobs.policy import field_error

__all__ = [
    "CallableScorer",
    "EvaluateSpec",
    "ExactScorer",
    "JsonFieldScorer",
    "NormalizedScorer",
    "NumericScorer",
    "RegexScorer",
    "ScorerFunction",
    "ScorerSpec",
    "load_function",
]

#: What a ``callable`` scorer points at: ``(answer, reference, row) -> bool | float``.
ScorerFunction = Callable[[str, Any, dict[str, Any]], Any]

ScorerName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
_FUNCTION_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class _Scorer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ScorerName | None = Field(
        default=None,
        description="The scorer's name in the ledger and in `groqbatch report` (letters, "
        "digits, `_`, `.`, `-`; at most 64). Default: its `kind`. Names must differ within "
        "a job.",
    )
    reference: str | None = Field(
        default=None,
        min_length=1,
        description="The input column this scorer compares with. Default: "
        "`[evaluate].reference`.",
    )

    @property
    def label(self) -> str:
        """``name``, else ``kind``."""
        kind: str = getattr(self, "kind")  # noqa: B009 - every subclass declares it
        return self.name or kind


class ExactScorer(_Scorer):
    """1 when the answer equals the reference, both stripped of surrounding whitespace."""

    kind: Literal["exact"] = Field(
        description='`"exact"`: 1 when the answer equals the reference, both stripped of '
        "surrounding whitespace, else 0."
    )


class NormalizedScorer(_Scorer):
    """1 when the answer equals the reference ignoring case, whitespace and punctuation."""

    kind: Literal["normalized"] = Field(
        description='`"normalized"`: 1 when the answer equals the reference ignoring case, '
        "whitespace and punctuation (after NFKC normalisation), else 0."
    )


class RegexScorer(_Scorer):
    """1 when the answer matches ``pattern`` (``re.search``); with no ``pattern``, the row's
    reference is the pattern (so each row can say what it accepts)."""

    kind: Literal["regex"] = Field(
        description='`"regex"`: 1 when `pattern` (else the row\'s reference, as a pattern) '
        "is found in the answer (`re.search`), else 0."
    )
    pattern: str | None = Field(
        default=None,
        description="A Python regular expression, compiled when the config loads. Default: "
        "each row's reference is its pattern.",
    )
    ignore_case: bool = Field(
        default=False, description="Match ignoring case (`re.IGNORECASE`)."
    )
    fullmatch: bool = Field(
        default=False,
        description="The whole answer, stripped of surrounding whitespace, must match — not "
        "just a part of it.",
    )

    @field_validator("pattern", mode="after")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class JsonFieldScorer(_Scorer):
    """1 when the answer, parsed as JSON (a fenced ```json block too), has ``field`` equal to
    the reference. ``field`` is a dotted path; list items by index (``items.0.name``)."""

    kind: Literal["json_field"] = Field(
        description='`"json_field"`: 1 when the answer, parsed as JSON (a fenced `json` code '
        "block too), holds a value at `field` equal to the reference, else 0."
    )
    field: str = Field(
        min_length=1,
        description="A dotted path into the parsed answer (`city.name`); list items by "
        "index (`items.0.name`).",
    )


class NumericScorer(_Scorer):
    """1 when the first number in the answer is within ``tolerance`` of the reference
    (``1,234.5`` and ``-3e2`` are read; a reference may be a number or text holding one)."""

    kind: Literal["numeric"] = Field(
        description='`"numeric"`: 1 when the first number in the answer (`1,234.5` and '
        "`-3e2` are read) is within `tolerance` of the reference, else 0."
    )
    tolerance: float = Field(
        default=0.0,
        ge=0,
        description="The largest absolute difference that still scores 1. Default 0: equal.",
    )


class CallableScorer(_Scorer):
    """Your function ``module:function``, called as ``function(answer, reference, row)``; it
    returns a bool or a float in [0, 1]. The module is imported when the config loads, with
    the config's folder first on the import path."""

    kind: Literal["callable"] = Field(
        description='`"callable"`: your function decides; it returns a bool or a float in '
        "[0, 1]."
    )
    function: str = Field(
        description='`"package.module:function"`, called as `function(answer, reference, '
        "row)`. Imported when the config loads, the config's folder first on the import path; "
        "one that cannot be imported or does not take three arguments is a config error."
    )

    _function: ScorerFunction | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _importable(self, info: ValidationInfo) -> CallableScorer:
        context = info.context if isinstance(info.context, dict) else {}
        base_dir = context.get("base_dir")
        self._function = load_function(self.function, Path(base_dir) if base_dir else None)
        return self

    @property
    def resolved(self) -> ScorerFunction:
        """The imported function."""
        if self._function is None:  # built without validation (model_construct)
            self._function = load_function(self.function, None)
        return self._function


ScorerSpec = Annotated[
    ExactScorer | NormalizedScorer | RegexScorer | JsonFieldScorer | NumericScorer | CallableScorer,
    Field(discriminator="kind"),
]


def load_function(ref: str, base_dir: Path | None) -> ScorerFunction:
    """Import ``module:function`` (``base_dir`` searched first). A problem is a config error
    about the ``function`` field, raised during validation."""
    if not _FUNCTION_REF.match(ref):
        raise field_error("function", f"{ref!r} is not of the form 'module:function'")
    module_name, _, attribute = ref.partition(":")
    added = str(base_dir) if base_dir is not None and str(base_dir) not in sys.path else None
    if added is not None:
        sys.path.insert(0, added)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of the user's module
        raise field_error(
            "function", f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        if added is not None and added in sys.path:
            sys.path.remove(added)
    function = getattr(module, attribute, None)
    if not callable(function):
        raise field_error("function", f"module {module_name!r} has no function {attribute!r}")
    try:
        inspect.signature(function).bind("answer", "reference", {})
    except TypeError:
        raise field_error(
            "function", f"{ref} must take three arguments: (answer, reference, row)"
        ) from None
    except ValueError:  # a builtin without a signature: trust it
        pass
    return function  # type: ignore[no-any-return]


class EvaluateSpec(BaseModel):
    """``[evaluate]``: the reference column and the scorers. Scores are computed when a run
    has every request answered or failed, and stored in the ledger per run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reference: str = Field(
        min_length=1,
        description="The input column holding each row's expected answer. A row with no "
        "value there is left out of the means.",
    )
    scorers: tuple[ScorerSpec, ...] = Field(
        description="One or more `[[evaluate.scorers]]` tables, each with a `kind`: "
        "`exact`, `normalized`, `regex`, `json_field`, `numeric` or `callable`."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> EvaluateSpec:
        if not self.scorers:
            raise field_error("scorers", "add at least one scorer: [[evaluate.scorers]] kind = ...")
        seen: set[str] = set()
        for scorer in self.scorers:
            if scorer.label in seen:
                raise field_error(
                    "scorers",
                    f"two scorers are named {scorer.label!r}; give each a distinct name = \"...\"",
                )
            seen.add(scorer.label)
        return self
