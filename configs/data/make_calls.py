"""Write calls.jsonl: six short WAV recordings as Base64 data URLs, for configs/transcribe.toml.

    python configs/data/make_calls.py          # rewrites configs/data/calls.jsonl

Each "call" is a few tones (8 kHz, 8-bit mono: small, and a real WAV whose length the local
server reads). The output is byte-for-byte the same on every run; a test checks that the
committed file is what this script writes.
"""

from __future__ import annotations

import base64
import io
import json
import math
import sys
import wave
from pathlib import Path

RATE_HZ = 8000
CALLS = [
    # (call_id, language, seconds, tone Hz)
    ("C001", "en", 0.8, 440),
    ("C002", "en", 1.5, 523),
    ("C003", "fr", 0.5, 392),
    ("C004", "en", 2.0, 659),
    ("C005", "de", 1.2, 330),
    ("C006", "en", 0.25, 587),
]


def wav_bytes(seconds: float, tone_hz: float) -> bytes:
    """A mono 8-bit PCM WAV of ``seconds`` of a tone that fades in and out."""
    frames = round(seconds * RATE_HZ)
    samples = bytearray(frames)
    for n in range(frames):
        envelope = math.sin(math.pi * n / frames)
        samples[n] = 128 + round(100 * envelope * math.sin(2 * math.pi * tone_hz * n / RATE_HZ))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(RATE_HZ)
        out.writeframes(bytes(samples))
    return buffer.getvalue()


def lines() -> str:
    rows = []
    for call_id, language, seconds, tone in CALLS:
        data = base64.b64encode(wav_bytes(seconds, tone)).decode()
        rows.append(json.dumps({"call_id": call_id, "language": language, "seconds": seconds,
                                "audio_url": f"data:audio/wav;base64,{data}"}))
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("calls.jsonl")
    target.write_text(lines(), encoding="utf-8")
    print(f"wrote {target} ({len(CALLS)} calls)")
