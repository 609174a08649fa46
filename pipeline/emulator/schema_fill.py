"""A deterministic JSON-Schema instance generator for ``response_format: json_schema`` answers.

:func:`fill` returns a value that fits ``schema``, built from the words of a request and a
digest of it: the same (schema, words, digest) always give the same value, and each value
depends on its place in the document (its JSON path), not on the order of generation.

Supported keywords: ``type`` (one or a list), ``const``, ``enum``, ``anyOf``/``oneOf`` (the
first branch), ``allOf`` (merged), ``$ref`` to ``#/$defs/…``, ``#/definitions/…`` or any
JSON pointer in the document; objects (``properties``, ``required``,
``additionalProperties``, ``minProperties``), strings (``minLength``, ``maxLength``,
``format``), integers and numbers (``minimum``, ``maximum``, ``exclusiveMinimum``,
``exclusiveMaximum``, ``multipleOf``), booleans, null, arrays (``items``, ``prefixItems``,
``minItems``, ``maxItems``). ``pattern`` is not honoured. A schema that cannot be filled
(``false``, a broken ``$ref``, empty ranges) raises :class:`SchemaError`.

>>> fill({"type": "object", "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 5}},
...       "required": ["n"], "additionalProperties": False}, ["hi"], b"k")
{'n': 5}
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

MAX_DEPTH = 24
"""Past this nesting (recursive ``$ref`` schemas) only required parts are generated."""
SHALLOW_DEPTH = 4
"""Beyond this depth optional properties are left out and arrays take their minimum size."""
FALLBACK_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")

_FORMATS: dict[str, str] = {
    "date-time": "2025-01-01T00:00:{s:02d}Z",
    "date": "2025-01-{d:02d}",
    "time": "12:00:{s:02d}",
    "email": "user{n}@example.com",
    "uri": "https://example.com/{n}",
    "url": "https://example.com/{n}",
    "hostname": "host{n}.example.com",
    "ipv4": "192.0.2.{b}",
    "uuid": "00000000-0000-4000-8000-{n:012d}",
}


class SchemaError(ValueError):
    """The schema cannot be filled (unsupported, contradictory or a broken ``$ref``)."""


def fill(schema: Any, words: Sequence[str], digest: bytes) -> Any:
    """A value that fits ``schema``, derived from ``words`` and ``digest``."""
    return _Filler(schema, words, digest).value(schema, "$", 0)


class _Filler:
    def __init__(self, root: Any, words: Sequence[str], digest: bytes) -> None:
        self.root = root
        self.words = [w for w in words if w] or list(FALLBACK_WORDS)
        self.digest = digest

    def pick(self, path: str, salt: str = "") -> int:
        """A stable 64-bit number for this place in the document."""
        data = self.digest + f"\x00{path}\x00{salt}".encode()
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise SchemaError(f"only local $ref are supported, got {ref!r}")
        node = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise SchemaError(f"$ref {ref!r} does not resolve")
        return node

    def value(self, schema: Any, path: str, depth: int) -> Any:
        if depth > MAX_DEPTH * 2:
            raise SchemaError("schema nests too deeply (a $ref cycle with required parts?)")
        if schema is True or schema == {}:
            return self.text(path, {})
        if schema is False:
            raise SchemaError(f"{path}: the schema `false` accepts no value")
        if not isinstance(schema, Mapping):
            raise SchemaError(f"{path}: a schema must be an object or a boolean")
        if "$ref" in schema:
            target = self.resolve(str(schema["$ref"]))
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            merged = _merge(target, rest) if rest and isinstance(target, Mapping) else target
            return self.value(merged, path, depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            choices = list(schema["enum"])
            if not choices:
                raise SchemaError(f"{path}: empty enum")
            return choices[self.pick(path, "enum") % len(choices)]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = schema[key]
                if not isinstance(branches, list) or not branches:
                    raise SchemaError(f"{path}: {key} needs a non-empty list")
                rest = {k: v for k, v in schema.items() if k != key}
                first = branches[0]
                merged = _merge(first, rest) if isinstance(first, Mapping) else first
                return self.value(merged, path, depth + 1)
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                if isinstance(part, Mapping):
                    if "$ref" in part:
                        part = self.resolve(str(part["$ref"]))
                    merged = _merge(merged, part)
            return self.value(merged, path, depth + 1)
        kind = _type_of(schema)
        if kind == "object":
            return self.obj(schema, path, depth)
        if kind == "array":
            return self.array(schema, path, depth)
        if kind == "integer":
            return self.integer(schema, path)
        if kind == "number":
            return self.number(schema, path)
        if kind == "boolean":
            return bool(self.pick(path, "bool") & 1)
        if kind == "null":
            return None
        return self.text(path, schema)

    def obj(self, schema: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        shallow = depth <= SHALLOW_DEPTH
        names = list(properties) if shallow else [n for n in properties if n in required]
        names += [r for r in required if r not in names]
        result: dict[str, Any] = {}
        extra_schema = schema.get("additionalProperties", True)
        for name in names:
            sub = properties.get(name, extra_schema if extra_schema is not False else True)
            result[name] = self.value(sub, f"{path}.{name}", depth + 1)
        minimum = int(schema.get("minProperties", 0))
        index = 0
        while len(result) < minimum:
            if extra_schema is False:
                raise SchemaError(f"{path}: minProperties cannot be met without extra properties")
            key = f"extra_{index}"
            index += 1
            if key not in result:
                sub = extra_schema if isinstance(extra_schema, Mapping) else True
                result[key] = self.value(sub, f"{path}.{key}", depth + 1)
        return result

    def array(self, schema: Mapping[str, Any], path: str, depth: int) -> list[Any]:
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", max(low, 3)))
        if high < low:
            raise SchemaError(f"{path}: maxItems < minItems")
        prefix = list(schema.get("prefixItems") or [])
        wanted = low if depth > SHALLOW_DEPTH else max(low, 1 + self.pick(path, "len") % 3)
        wanted = max(min(wanted, high), min(len(prefix), high) if depth <= SHALLOW_DEPTH else low)
        items = schema.get("items", True)
        out = []
        for i in range(wanted):
            sub = prefix[i] if i < len(prefix) else items
            out.append(self.value(sub, f"{path}[{i}]", depth + 1))
        return out

    def integer(self, schema: Mapping[str, Any], path: str) -> int:
        low, high = _bounds(schema, integer=True)
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first = math.ceil(low / step) * step
            last = math.floor(high / step) * step
            if first > last:
                raise SchemaError(f"{path}: no multiple of {step} in range")
            return int(first + step * (self.pick(path, "int") % ((last - first) // step + 1)))
        return int(low + self.pick(path, "int") % (int(high) - int(low) + 1))

    def number(self, schema: Mapping[str, Any], path: str) -> float | int:
        if isinstance(schema.get("multipleOf"), int):
            return self.integer(schema, path)
        low, high = _bounds(schema, integer=False)
        fraction = (self.pick(path, "num") % 10_001) / 10_000
        value = round(low + (high - low) * fraction, 2)
        if not low <= value <= high or _excluded(schema, value):
            value = low + (high - low) / 2
        return value

    def text(self, path: str, schema: Mapping[str, Any]) -> str:
        n = self.pick(path, "str")
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            base = _FORMATS[fmt].format(s=n % 60, d=1 + n % 28, n=n % 10**9, b=1 + n % 254)
        else:
            count = 1 + n % 3
            start = (n >> 8) % len(self.words)
            base = " ".join(self.words[(start + i) % len(self.words)] for i in range(count))
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        while len(base) < low:
            base += " " + self.words[len(base) % len(self.words)]
        if len(base) < low:  # pragma: no cover - the loop above always grows past low
            base = base.ljust(low, "x")
        if isinstance(high, int):
            if high < low:
                raise SchemaError(f"{path}: maxLength < minLength")
            base = base[:high]
        return base


def _type_of(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        real = [k for k in kind if k != "null"]
        return str(real[0]) if real else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema or "minItems" in schema:
        return "array"
    if "minimum" in schema or "maximum" in schema:
        return "number"
    return "string"


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[float, float]:
    low = schema.get("minimum")
    high = schema.get("maximum")
    ex_low = schema.get("exclusiveMinimum")
    ex_high = schema.get("exclusiveMaximum")
    nudge = 1 if integer else 0.01
    candidates_low = [v for v in (low, None if ex_low is None else ex_low + nudge) if v is not None]
    candidates_high = [v for v in (high, None if ex_high is None else ex_high - nudge) if v is not None]
    lo = max(candidates_low) if candidates_low else None
    hi = min(candidates_high) if candidates_high else None
    if lo is None and hi is None:
        lo, hi = 0, 100
    elif lo is None:
        assert hi is not None
        lo = min(0, hi)
    elif hi is None:
        hi = max(lo + 100, lo)
    if integer:
        lo, hi = math.ceil(lo), math.floor(hi)
    if lo > hi:
        raise SchemaError("the numeric range of the schema is empty")
    return float(lo) if not integer else lo, float(hi) if not integer else hi


def _excluded(schema: Mapping[str, Any], value: float) -> bool:
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    return (ex_low is not None and value <= ex_low) or (ex_high is not None and value >= ex_high)


def _merge(base: Any, extra: Mapping[str, Any]) -> Any:
    """``base`` with ``extra``'s keywords; properties merged and required unioned."""
    if not isinstance(base, Mapping):
        return base
    merged = dict(base)
    for key, value in extra.items():
        if key == "properties" and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        elif key == "required" and isinstance(merged.get(key), list):
            merged[key] = list(dict.fromkeys([*merged[key], *value]))
        elif key not in merged:
            merged[key] = value
    return merged
