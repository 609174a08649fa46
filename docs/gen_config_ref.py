"""The configuration reference, generated from the job config's pydantic models.

Every key a job config may hold is a field of :class:`jobs.JobSpec` or of a model reachable
from it, and every field carries ``Field(description=...)``. :func:`config_keys` walks them
all and :func:`render_config_reference` writes them as Markdown tables, one per config table
(``[input]``, ``[policy.fallback]``, ``[[evaluate.scorers]]``, …): the dotted key, its type,
its default and its description. ``docs/hooks.py`` puts the result into
``configuration.md`` at build time; ``tests/unit/test_docs.py`` checks that no key is left
undescribed or out.

Uses only pydantic and the job models, never MkDocs, so a test can import it without the
``docs`` extra.
"""

from __future__ import annotations

import datetime as dt
import json
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from jobs import JobSpec

MARKER = "<!-- groqbatch:config-reference -->"

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean",
            dt.timedelta: 'duration ("36h")', dt.datetime: "datetime (ISO 8601, with offset)",
            type(None): "null"}


@dataclass(frozen=True)
class ConfigKey:
    """One key of a job config."""

    path: str
    """Dotted, as a person names it: ``policy.fallback.max_attempts``; items of an array of
    tables carry ``[]``: ``evaluate.scorers[].kind``."""
    table: str
    """The table it sits in, as written in a config: ``[policy.fallback]``; ``(top level)``."""
    type: str
    default: str
    description: str
    only_for: str | None = None
    """For a key of one variant of a union of tables: which (``type = "json_schema"``)."""

    @property
    def anchor(self) -> str:
        """The HTML id of its row: the dotted path, so ``configuration.md#policy.cache``."""
        return self.path.replace("[]", "")


def _strip(annotation: Any) -> Any:
    """``Annotated[X, ...]`` → ``X``."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _union_args(annotation: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(annotation)
    return None


def _models(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The models a field's annotation holds, and whether they are items of an array."""
    annotation = _strip(annotation)
    args = _union_args(annotation)
    if args is not None:
        found: list[type[BaseModel]] = []
        array = False
        for arg in args:
            models, is_array = _models(arg)
            found += models
            array = array or is_array
        return found, array
    if typing.get_origin(annotation) in (list, tuple):
        models, _ = _models(typing.get_args(annotation)[0])
        return models, bool(models)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    return [], False


def type_name(annotation: Any) -> str:
    """A config key's type, for people: ``integer``, ``"batch" | "sync"``, ``list of string``."""
    annotation = _strip(annotation)
    args = _union_args(annotation)
    if args is not None:
        names = [type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(dict.fromkeys(names))
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(value) for value in typing.get_args(annotation))
    if origin in (list, tuple):
        return f"list of {type_name(typing.get_args(annotation)[0])}"
    if origin is dict or annotation is dict:
        return "table"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    if annotation is typing.Any:
        return "any"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None and isinstance(item, annotated_types.BaseMetadata):
                parts.append(f"{sign} {value:,}")
        if isinstance(item, annotated_types.MaxLen) and item.max_length is not None:
            parts.append(f"at most {item.max_length} items")
    return ", ".join(parts)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "not set"
    if isinstance(value, BaseModel):
        return "(its table)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return f"{value:_}" if isinstance(value, int) and value >= 10_000 else str(value)
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def config_keys(model: type[BaseModel] = JobSpec, prefix: str = "",
                table: str = "(top level)") -> Iterator[ConfigKey]:
    """Every key reachable from ``model``, depth first, in declaration order."""
    for name, field in model.model_fields.items():
        yield from _field_keys(name, field, prefix, table)


def _field_keys(name: str, field: FieldInfo, prefix: str, table: str,
                only_for: str | None = None) -> Iterator[ConfigKey]:
    """The key of one field, then (for a table) every key inside it."""
    path = f"{prefix}{field.alias or name}"
    models, array = _models(field.annotation)
    kind = type_name(field.annotation)
    bounds = _bounds(field)
    yield ConfigKey(path=path, table=table, type=f"{kind} ({bounds})" if bounds else kind,
                    default=default_text(field), description=field.description or "",
                    only_for=only_for)
    if not models:
        return
    sub_table = f"[[{path}]]" if array else f"[{path}]"
    sub_prefix = f"{path}[]." if array else f"{path}."
    if len(models) == 1:
        yield from config_keys(models[0], sub_prefix, sub_table)
    else:
        yield from _variant_keys(models, sub_prefix, sub_table)


def _variant_keys(models: list[type[BaseModel]], prefix: str, table: str) -> Iterator[ConfigKey]:
    """The keys of a union of tables told apart by a ``Literal`` discriminator (``type``,
    ``kind``): the discriminator once, with what each value means, then every other key once,
    with the variants it belongs to when not all."""
    discriminator = next(
        name for name, field in models[0].model_fields.items()
        if typing.get_origin(_strip(field.annotation)) is Literal
    )
    values = [typing.get_args(_strip(m.model_fields[discriminator].annotation))[0]
              for m in models]
    yield ConfigKey(
        path=f"{prefix}{discriminator}", table=table,
        type=" | ".join(json.dumps(value) for value in values), default="required",
        description="<br>".join(m.model_fields[discriminator].description or "" for m in models),
    )
    owners: dict[str, list[int]] = {}
    for index, model in enumerate(models):
        for name in model.model_fields:
            if name != discriminator:
                owners.setdefault(name, []).append(index)
    for name, indexes in owners.items():
        only_for = None
        if len(indexes) < len(models):
            only_for = " or ".join(f"{discriminator} = {json.dumps(values[i])}" for i in indexes)
        field = models[indexes[0]].model_fields[name]
        yield from _field_keys(name, field, prefix, table, only_for)


#: Defaults written as words, not as config values.
_PLAIN_DEFAULTS = ("required", "not set", "(its table)")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_config_reference(keys: list[ConfigKey] | None = None) -> str:
    """The reference as Markdown: a table per config table, a row per key."""
    keys = list(config_keys()) if keys is None else keys
    tables: dict[str, list[ConfigKey]] = {}
    for key in keys:
        tables.setdefault(key.table, []).append(key)
    out: list[str] = []
    for table, rows in tables.items():
        out += [f"### `{table}`" if table != "(top level)" else "### Top level", ""]
        out += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key in rows:
            name = f'<a id="{key.anchor}"></a><code>{key.path.replace(".", ".<wbr>")}</code>'
            default = key.default if key.default in _PLAIN_DEFAULTS else f"`{key.default}`"
            note = f"*Only with `{key.only_for}`.* " if key.only_for else ""
            out.append(f"| {name} | {_cell(key.type)} | {_cell(default)} "
                       f"| {_cell(note + key.description)} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render_config_reference())
