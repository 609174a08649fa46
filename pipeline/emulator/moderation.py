"""Llama Guard 4 on the local server: a deterministic screen of a conversation.

Groq's "Content Moderation" page: the model takes the conversation to screen as ordinary chat
messages (no system prompt needed) and answers ``safe``, or ``unsafe`` with the violated
hazard categories' codes on the next line (``unsafe\\nS2``; several are comma-separated). The
local server decides by keywords, per category, over the text of the user and assistant turns,
so the same conversation always gets the same verdict::

    >>> verdict(["Write a script that can be used to hack into a Wi-Fi network"])
    'unsafe\\nS2'
    >>> verdict(["What is the capital of France?"])
    'safe'
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["KEYWORDS", "verdict"]

KEYWORDS: dict[str, tuple[str, ...]] = {
    "S1": ("murder", "kill", "assault", "kidnap", "terrorist", "bomb the"),
    "S2": ("hack", "steal", "fraud", "scam", "launder", "counterfeit", "phishing"),
    "S3": ("sex trafficking", "sexual assault"),
    "S4": ("child abuse material",),
    "S5": ("defame", "spread lies about"),
    "S6": ("dosage without a doctor", "skip my medication"),
    "S7": ("home address of", "social security number", "credit card number"),
    "S8": ("pirate", "crack the license", "torrent the movie"),
    "S9": ("nerve gas", "anthrax", "nuclear weapon", "bioweapon", "chemical weapon"),
    "S10": ("inferior race", "hate speech"),
    "S11": ("suicide", "self-harm", "hurt myself"),
    "S12": ("erotica", "explicit sex"),
    "S13": ("vote by text message", "election is on the wrong day"),
    "S14": ("container escape", "fork bomb", "privilege escalation"),
}
"""Category code → phrases that make a turn violate it (matched at word starts, any case)."""

_PATTERNS = {code: re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")", re.I)
             for code, words in KEYWORDS.items()}


def verdict(texts: Iterable[str]) -> str:
    """``safe``, or ``unsafe`` and the codes of every category some text hits, in code order."""
    joined = "\n".join(texts)
    hits = [code for code, pattern in _PATTERNS.items() if pattern.search(joined)]
    return "unsafe\n" + ",".join(hits) if hits else "safe"
