"""Moderation answers: Llama Guard's ``safe`` / ``unsafe\\nS1,S10`` as columns.

``meta-llama/llama-guard-4-12b`` (Groq's content moderation model, also on the batch path)
answers a screened conversation with ``safe``, or ``unsafe`` and, on the next line, the codes
of the hazard categories it violates, comma-separated. With ``[output] kind = "moderation"``
each answer is parsed into three fields, exported as columns::

    >>> parse_moderation("unsafe\\nS2,S10")
    {'safe': False, 'categories': ['S2', 'S10'], 'category_names': ['Non-Violent Crimes', 'Hate']}
    >>> parse_moderation("safe")
    {'safe': True, 'categories': [], 'category_names': []}

Anything else is an invalid output (``invalid_output: not a moderation verdict …``), treated as
any answer that does not fit its job's output schema. The names are the docs' taxonomy
(Groq's "Content Moderation" page, after MLCommons' hazards); a code outside it is kept, and
named as itself.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CATEGORIES", "MODERATION_FIELDS", "parse_moderation"]

CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}
"""Llama Guard 4's hazard categories: code → name."""

MODERATION_FIELDS: dict[str, Any] = {
    "safe": {"type": "boolean"},
    "categories": {"type": "array", "items": {"type": "string"}},
    "category_names": {"type": "array", "items": {"type": "string"}},
}
"""The parsed fields, as JSON schemas (export types its columns from them)."""

_CODE = re.compile(r"^S\d{1,2}$")


def parse_moderation(content: str) -> dict[str, Any]:
    """The fields of one Llama Guard answer; ``ValueError`` saying why if it is not a verdict."""
    lines = [line.strip() for line in content.strip().splitlines() if line.strip()]
    if not lines or lines[0].lower() not in ("safe", "unsafe"):
        raise ValueError(f"not a moderation verdict (safe, or unsafe and categories): {content[:80]!r}")
    if lines[0].lower() == "safe":
        if len(lines) > 1:
            raise ValueError(f"a safe verdict with more after it: {content[:80]!r}")
        return {"safe": True, "categories": [], "category_names": []}
    codes = [code.strip().upper() for line in lines[1:] for code in line.split(",") if code.strip()]
    for code in codes:
        if not _CODE.match(code):
            raise ValueError(f"{code!r} is not a hazard category code (S1 … S14)")
    return {"safe": False, "categories": codes,
            "category_names": [CATEGORIES.get(code, code) for code in codes]}
