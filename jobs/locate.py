"""Where is ``policy.fallback.triggers`` in this file? Line numbers for config key paths.

tomllib and json give values, not positions, so a small scanner walks the source text of a
file that has *already parsed* and notes the line where each key path first appears: TOML
table headers ``[a.b]`` and ``[[a.b]]``, dotted keys ``a.b = 1``, inline tables and arrays
(also across lines), JSON objects and arrays. YAML uses ``yaml.compose`` node marks.
Best effort by design: :func:`line_of` falls back to the nearest enclosing key or header::

    >>> index = key_lines("[policy]\\nmode = 'batch'\\n", "toml")
    >>> line_of(index, ("policy", "mode")), line_of(index, ("policy", "cache"))
    (2, 1)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import yaml

__all__ = ["KeyPath", "key_lines", "line_of"]

KeyPath = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = frozenset(",]}\n#\r")


class _Scanner:
    """A cursor over TOML or JSON text that records ``path -> line`` as it meets keys."""

    def __init__(self, text: str, separator: str) -> None:
        self.text = text
        self.sep = separator
        self.i = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}

    # -- primitives ------------------------------------------------------------------

    def peek(self, n: int = 1) -> str:
        return self.text[self.i : self.i + n]

    def advance(self, n: int = 1) -> None:
        self.line += self.text.count("\n", self.i, self.i + n)
        self.i += n

    def skip_space(self, newlines: bool) -> None:
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            elif c == "#" and self.sep == "=":
                end = self.text.find("\n", self.i)
                self.advance((len(self.text) if end < 0 else end) - self.i)
            else:
                return

    def note(self, path: KeyPath) -> None:
        for n in range(1, len(path) + 1):
            self.lines.setdefault(path[:n], self.line)

    def string(self) -> str:
        """Read one quoted string (basic, literal or multi-line); return its text."""
        for quote in ('"""', "'''"):
            if self.peek(3) == quote:
                end = self.text.find(quote, self.i + 3)
                end = len(self.text) if end < 0 else end
                while self.text[end + 3 : end + 4] == quote[0]:  # """a"""" ends late
                    end += 1
                raw = self.text[self.i + 3 : end]
                self.advance(end + 3 - self.i)
                return raw
        quote = self.text[self.i]
        j = self.i + 1
        while j < len(self.text) and self.text[j] != quote:
            j += 2 if quote == '"' and self.text[j] == "\\" else 1
        raw = self.text[self.i : j + 1]
        self.advance(j + 1 - self.i)
        if quote == '"':
            try:
                return str(json.loads(raw))
            except ValueError:
                return raw[1:-1]
        return raw[1:-1]

    def key(self) -> list[str]:
        """A (dotted) key: bare or quoted parts separated by dots."""
        parts: list[str] = []
        while True:
            self.skip_space(newlines=False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                match = _BARE.match(self.text, self.i)
                if match is None:
                    raise ValueError(f"no key at line {self.line}")
                parts.append(match.group())
                self.advance(match.end() - self.i)
            self.skip_space(newlines=False)
            if self.peek() != "." or self.sep == ":":
                return parts
            self.advance()

    # -- values ----------------------------------------------------------------------

    def value(self, path: KeyPath) -> None:
        self.skip_space(newlines=self.sep == ":")
        c = self.peek()
        if c in ('"', "'"):
            self.string()
        elif c == "{":
            self.table(path)
        elif c == "[":
            self.array(path)
        else:
            start = self.i
            while self.i < len(self.text) and self.text[self.i] not in _SCALAR_END:
                self.i += 1
            if self.i == start:
                raise ValueError(f"no value at line {self.line}")

    def table(self, path: KeyPath) -> None:
        self.advance()  # {
        while True:
            self.skip_space(newlines=True)
            if self.peek() == "}":
                self.advance()
                return
            if self.peek() == ",":
                self.advance()
                continue
            full = path + tuple(self.key())
            self.note(full)
            self.skip_space(newlines=False)
            if self.peek() != self.sep:
                raise ValueError(f"expected {self.sep!r} at line {self.line}")
            self.advance()
            self.value(full)

    def array(self, path: KeyPath) -> None:
        self.advance()  # [
        index = 0
        while True:
            self.skip_space(newlines=True)
            if self.peek() == "]":
                self.advance()
                return
            if self.peek() == ",":
                self.advance()
                index += 1
                continue
            self.note((*path, index))
            self.value((*path, index))

    # -- documents -------------------------------------------------------------------

    def toml(self) -> None:
        table: KeyPath = ()
        array_counts: dict[KeyPath, int] = {}
        while True:
            self.skip_space(newlines=True)
            if self.i >= len(self.text):
                return
            if self.peek(2) == "[[":
                self.advance(2)
                name = tuple(self.key())
                self.advance(2)
                count = array_counts[name] = array_counts.get(name, -1) + 1
                table = (*name, count)
                self.note(table)
            elif self.peek() == "[":
                self.advance()
                table = tuple(self.key())
                self.advance()
                self.note(table)
            else:
                full = table + tuple(self.key())
                self.note(full)
                self.skip_space(newlines=False)
                self.advance()  # =
                self.value(full)


def _yaml_lines(text: str) -> dict[KeyPath, int]:
    lines: dict[KeyPath, int] = {}

    def walk(node: yaml.Node, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = (*path, str(key_node.value))
                lines.setdefault(child, key_node.start_mark.line + 1)
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines.setdefault((*path, index), item.start_mark.line + 1)
                walk(item, (*path, index))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def key_lines(text: str, kind: str) -> dict[KeyPath, int]:
    """``path -> line`` (1-based) for every key path of a parsed ``toml``/``json``/``yaml`` text.

    Never raises: on anything unexpected it returns what it found so far.
    """
    if kind == "yaml":
        try:
            return _yaml_lines(text)
        except yaml.YAMLError:
            return {}
    scanner = _Scanner(text, "=" if kind == "toml" else ":")
    try:
        if kind == "toml":
            scanner.toml()
        else:
            scanner.value(())
    except (ValueError, IndexError):
        pass
    return scanner.lines


def line_of(index: dict[KeyPath, int], path: Sequence[str | int]) -> int:
    """The line of ``path``, else of its nearest enclosing key or table; 1 if none."""
    key = tuple(path)
    while key:
        if key in index:
            return index[key]
        key = key[:-1]
    return 1
