"""groqbatch: run LLM work in bulk through the Groq Batch API."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
