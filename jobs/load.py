"""Load a job config (TOML, YAML or JSON) into a :class:`~jobs.spec.JobSpec`.

Every problem is a :class:`~pipeline.errors.ConfigError` naming the file, the line and the
field, with a hint where one helps::

    >>> load_job("configs/typo.toml")
    ConfigError: configs/typo.toml:7: policy.completion_windw: unknown key
    (did you mean "completion_window"?)

Unparseable files report the parser's own line. :func:`spec_hash` is a stable hash of the
spec's canonical JSON (the same config gives the same hash on any machine).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ValidationError

from jobs.locate import KeyPath, key_lines, line_of
from jobs.spec import JobSpec
from pipeline.errors import ConfigError

__all__ = [
    "CONFIG_SUFFIXES",
    "LEDGER_ENV",
    "config_error_at",
    "load_job",
    "parse_config",
    "spec_hash",
    "spec_json",
    "with_ledger",
]

LEDGER_ENV = "GROQBATCH_LEDGER"
"""The environment variable that names the ledger over a config's ``ledger``."""

CONFIG_SUFFIXES = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}
_SECRET_KEYS = frozenset({"api_key", "apikey", "groq_api_key", "authorization"})
_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def with_ledger(spec: JobSpec, target: str | os.PathLike[str] | None = None) -> JobSpec:
    """``spec`` with its ledger replaced by ``target`` — else by ``$GROQBATCH_LEDGER`` if set —
    so workers on several machines share one ledger without editing the config. A path is
    taken from the current directory (as typed on a command line), a URL as it is."""
    chosen = target if target is not None else os.environ.get(LEDGER_ENV) or None
    if chosen is None:
        return spec
    text = os.fspath(chosen)
    if "://" not in text:
        text = str(Path(text).expanduser().resolve())
    return spec.model_copy(update={"ledger": text})


def load_job(path: str | os.PathLike[str]) -> JobSpec:
    """Read, parse and validate the job config at ``path``."""
    file = Path(path)
    kind = CONFIG_SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"unknown config format {file.suffix or '(no suffix)'!r}",
            path=file,
            hint="use a .toml, .yaml, .yml or .json file",
        )
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", path=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config: {exc}", path=file) from None
    data = parse_config(text, kind, file)
    _refuse_secrets(data, (), file, text, kind)
    try:
        return JobSpec.model_validate(data, context={"base_dir": file.resolve().parent})
    except ValidationError as exc:
        raise _config_error(exc, data, file, key_lines(text, kind)) from None


def parse_config(text: str, kind: str, path: Path) -> dict[str, Any]:
    """Parse ``text`` as ``kind``; syntax errors carry the parser's line and the key there."""
    line: int | None = None
    try:
        if kind == "toml":
            return tomllib.loads(text)
        data = json.loads(text) if kind == "json" else yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:
        at = _TOML_AT.search(str(exc))
        line = int(at[1]) if at else None
        message = _TOML_AT.sub("", str(exc)).strip()
    except json.JSONDecodeError as exc:
        line, message = exc.lineno, f"{exc.msg} (column {exc.colno})"
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(filter(None, [exc.context, exc.problem]))
    except yaml.YAMLError as exc:
        message = str(exc)
    else:
        if not isinstance(data, dict):
            raise ConfigError(
                f"a job config is a table of keys, not {type(data).__name__}", path=path, line=1
            )
        return data
    raise ConfigError(
        f"cannot parse as {kind.upper()}: {message}",
        path=path,
        line=line,
        field=_key_on_line(text, line, kind) if line else None,
    )


def spec_json(spec: JobSpec) -> str:
    """The spec as canonical JSON: keys sorted, config spelling (``schema``, not the field)."""
    data = spec.model_dump(mode="json", by_alias=True)
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()


def config_error_at(config: str | os.PathLike[str] | None, key: str, message: str, *,
                    hint: str | None = None, error: type[ConfigError] = ConfigError) -> ConfigError:
    """A :class:`ConfigError` about the dotted ``key`` of a loaded config, naming the file and
    the key's line (read again from the file; without a file, the key alone)."""
    line = None
    if config is not None:
        file = Path(config)
        kind = CONFIG_SUFFIXES.get(file.suffix.lower())
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
        if kind is not None and text is not None:
            line = line_of(key_lines(text, kind), key.split("."))
    return error(message, path=None if config is None else Path(config), line=line, field=key, hint=hint)


def spec_hash(spec: JobSpec) -> str:
    """sha256 (hex) of :func:`spec_json`: stable across runs, machines and key orders."""
    return hashlib.sha256(spec_json(spec).encode()).hexdigest()


# -- secrets ---------------------------------------------------------------------------


def _refuse_secrets(data: Any, path: KeyPath, file: Path, text: str, kind: str) -> None:
    if isinstance(data, Mapping):
        for key, value in data.items():
            if str(key).lower() in _SECRET_KEYS:
                loc = (*path, str(key))
                raise ConfigError(
                    "an API key does not belong in a job config",
                    path=file,
                    line=line_of(key_lines(text, kind), loc),
                    field=_dotted(loc),
                    hint="remove it and set GROQ_API_KEY in the environment",
                )
            _refuse_secrets(value, (*path, str(key)), file, text, kind)


# -- validation errors -----------------------------------------------------------------


def job_from_dict(
    data: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None, source: str = "<dict>"
) -> JobSpec:
    """Build a job in code — a notebook, a pipeline — with the same checks as a config file.

    Relative paths (input, ledger, workdir) start at ``base_dir`` (default: the current
    folder). A mistake is a :class:`ConfigError` naming ``source`` and the field.

    >>> spec = job_from_dict({"name": "demo", "model": "llama-3.1-8b-instant",
    ...     "input": {"path": "rows.jsonl"}, "prompt": {"user": "{{ text }}"}})
    >>> spec.name
    'demo'
    """
    folder = Path(base_dir) if base_dir is not None else Path.cwd()
    try:
        return JobSpec.model_validate(dict(data), context={"base_dir": folder.resolve()})
    except ValidationError as exc:
        raise _config_error(exc, data, Path(source), None) from None


def _config_error(
    exc: ValidationError, data: Mapping[str, Any], file: Path, index: dict[KeyPath, int] | None
) -> ConfigError:
    """The first problem as the error; the others listed in its message, each with a line."""
    problems: dict[KeyPath, tuple[str, str | None, str]] = {}
    for error in exc.errors(include_url=False):
        loc = _source_loc(tuple(error["loc"]), error, data)
        message, hint = _describe(error, loc, data)
        if loc in problems:  # the members of a union each complain; say it once
            message = f"{problems[loc][0]}; or {message}"
        problems[loc] = (message, hint, error["type"])
    (loc, (message, hint, kind)), *others = problems.items()
    # a missing key has no line of its own: point at its table's header
    line = line_of(index, loc[:-1] if kind == "missing" else loc) if index is not None else None
    if others:
        also = "; ".join(
            (f"line {line_of(index, o)}: " if index is not None else "") + f"{_dotted(o)}: {m}"
            for o, (m, _, _) in others
        )
        message = f"{message} [also {also}]"
    return ConfigError(message, path=file, line=line, field=_dotted(loc) or None, hint=hint)


def _source_loc(loc: KeyPath, error: Any, data: Any) -> KeyPath:
    """The error's location as a path in the config: union member tags dropped, and a
    cross-field error pointed at its field."""
    extra = (error.get("ctx") or {}).get("config_field")
    if extra:
        loc = (*loc, extra)
    kept: list[str | int] = []
    node = data
    for position, part in enumerate(loc):
        last = position == len(loc) - 1
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_mapping or in_list:
            node = node[part]
        elif not (last and (error["type"] in ("missing", "config_field") or extra)):
            continue  # a union tag like "str" or "json_schema": not a key in the file
        kept.append(part)
    return tuple(kept)


def _describe(error: Any, loc: KeyPath, data: Mapping[str, Any]) -> tuple[str, str | None]:
    kind = error["type"]
    name = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        return "unknown key", _suggest(name, loc[:-1], data)
    if kind == "missing":
        where = f"[{_dotted(loc[:-1])}]" if len(loc) > 1 else "the top level"
        return "missing required key", f"add {name} = ... under {where}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind not in ("config_field",) and "input" in error and not isinstance(error["input"], dict):
        shown = repr(error["input"])
        if shown not in message:
            message = f"{message} (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return message, None


def _suggest(name: str, table: KeyPath, data: Mapping[str, Any]) -> str:
    names = _field_names(table, data)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    for other, other_names in _all_tables().items():
        if name in other_names and other != table:
            place = f"[{_dotted(other)}]" if other else "the top level"
            return f'"{name}" belongs under {place}'
    return "known keys: " + ", ".join(sorted(names)) if names else "no keys are allowed here"


def _field_names(table: KeyPath, data: Mapping[str, Any]) -> list[str]:
    model = _model_at(table, data)
    if model is None:
        return []
    return [field.alias or key for key, field in model.model_fields.items()]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated, tuple, list):
        return [m for arg in typing.get_args(annotation) if arg is not Ellipsis
                for m in _models_in(arg)]
    return []


def _model_at(table: KeyPath, data: Any) -> type[BaseModel] | None:
    model: type[BaseModel] = JobSpec
    node = data
    for part in table:
        if isinstance(part, int):  # an item of an array of tables ([[steps]]): same model
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        field = next((f for k, f in model.model_fields.items() if (f.alias or k) == part), None)
        node = node.get(part) if isinstance(node, Mapping) else None
        candidates = _models_in(field.annotation) if field is not None else []
        if len(candidates) > 1 and isinstance(node, Mapping):  # a tagged union: pick by "type"
            tagged = [m for m in candidates if node.get("type") in _literal_values(m)]
            candidates = tagged or candidates
        if not candidates:
            return None
        model = candidates[0]
    return model


def _literal_values(model: type[BaseModel]) -> tuple[Any, ...]:
    field = model.model_fields.get("type")
    return typing.get_args(field.annotation) if field is not None else ()


def _all_tables() -> dict[KeyPath, list[str]]:
    tables: dict[KeyPath, list[str]] = {}

    def walk(model: type[BaseModel], path: KeyPath) -> None:
        tables[path] = [f.alias or k for k, f in model.model_fields.items()]
        for key, field in model.model_fields.items():
            for sub in _models_in(field.annotation)[:1]:
                walk(sub, (*path, field.alias or key))

    walk(JobSpec, ())
    return tables


def _dotted(loc: KeyPath) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _key_on_line(text: str, line: int, kind: str) -> str | None:
    """Best effort: the key written on ``line`` of an unparseable file (TOML: with its table)."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return None
    source = lines[line - 1]
    pattern = {
        "toml": r"^\s*([\w.\"'-]+)\s*=",
        "json": r"\"([^\"]+)\"\s*:",
        "yaml": r"^\s*-?\s*([\w.-]+)\s*:",
    }
    match = re.search(pattern[kind], source)
    if kind == "toml":
        header = re.match(r"^\s*\[+\s*([^\]]+?)\s*\]+", source)
        if header:
            return header[1]
        tables = [
            m[1]
            for m in (re.match(r"^\s*\[+\s*([^\]]+?)\s*\]+", s) for s in lines[: line - 1])
            if m
        ]
        if match:
            return f"{tables[-1]}.{match[1]}" if tables else match[1]
    return match[1] if match else None
