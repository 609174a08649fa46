"""The local Groq-compatible server (``groqbatch serve``), also usable in-process as an ASGI app."""

from __future__ import annotations

from .config import EmulatorConfig, RateLimit, Scenario, load_scenario
from .server import Emulator, create_app

__all__ = ["Emulator", "EmulatorConfig", "RateLimit", "Scenario", "create_app", "load_scenario"]
