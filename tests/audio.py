"""Small real WAV files for the audio tests (the same generator as ``configs/data/make_calls.py``)."""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parent.parent / "configs" / "data" / "make_calls.py"
_spec = importlib.util.spec_from_file_location("make_calls", _SCRIPT)
assert _spec is not None
assert _spec.loader is not None
make_calls = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_calls)


def wav_bytes(seconds: float, tone_hz: float = 440) -> bytes:
    """A mono 8 kHz WAV of ``seconds``."""
    data: bytes = make_calls.wav_bytes(seconds, tone_hz)
    return data


def wav_data_url(seconds: float, tone_hz: float = 440) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav_bytes(seconds, tone_hz)).decode()
