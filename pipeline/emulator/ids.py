"""Object ids in Groq's shapes: ``file_`` / ``batch_`` / ``req_`` / ``ft_`` + 26 base32 chars.

Ids are ULID-like: a millisecond timestamp then randomness, lower-case Crockford base32, so
they sort by creation time as Groq's do (``file_01jh6x76wtemjr74t1fh0faj5t``).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_lock = threading.Lock()
_last = 0


def _ulid() -> str:
    global _last
    with _lock:
        # Strictly increasing even within one millisecond, so ids order as they were made.
        stamp = max(int(time.time() * 1000) << 80 | int.from_bytes(os.urandom(10), "big"), _last + 1)
        _last = stamp
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[stamp & 31])
        stamp >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """``new_id("file")`` → ``file_01…`` (26 characters after the underscore)."""
    return f"{prefix}_{_ulid()}"


def chat_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4()}"
