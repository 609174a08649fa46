"""The model catalogue: Groq's base models plus registered LoRA (``ft:``) models.

``GET /models`` and ``GET /models/{model}`` answer with Groq's extra fields (``active``,
``context_window``, ``max_completion_tokens``, …). Other modules ask :meth:`ModelRegistry.get`
whether a model id exists (chat, batch line validation) and register adapters' models.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.routing import Route

from .errors import model_not_found
from .http import JSONResponse

if TYPE_CHECKING:
    from .server import Emulator


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    owned_by: str
    created: int
    context_window: int
    max_completion_tokens: int
    features: tuple[str, ...] = ("json_mode",)
    input_modalities: tuple[str, ...] = ("text",)
    base_model: str | None = None
    """For an ``ft:`` model: the base it is a LoRA adapter of."""
    adapter_name: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.base_model is not None

    @property
    def is_speech_to_text(self) -> bool:
        """A Whisper model: it serves the audio endpoints, not chat completions."""
        return "audio" in self.input_modalities

    def as_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "active": True,
            "context_window": self.context_window,
            "public_apps": None,
            "max_completion_tokens": self.max_completion_tokens,
            "input_modalities": list(self.input_modalities),
            "output_modalities": ["text"],
            "supported_features": list(self.features),
        }


BASE_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("llama-3.1-8b-instant", "Meta", 1693721698, 131_072, 131_072),
    ModelInfo("llama-3.3-70b-versatile", "Meta", 1733447754, 131_072, 32_768),
    ModelInfo("openai/gpt-oss-20b", "OpenAI", 1754407957, 131_072, 65_536,
              features=("json_mode", "json_schema_strict", "reasoning")),
    ModelInfo("openai/gpt-oss-120b", "OpenAI", 1754408224, 131_072, 65_536,
              features=("json_mode", "json_schema_strict", "reasoning")),
    ModelInfo("meta-llama/llama-4-scout-17b-16e-instruct", "Meta", 1743874824, 131_072, 8_192,
              input_modalities=("text", "image")),
    ModelInfo("meta-llama/llama-4-maverick-17b-128e-instruct", "Meta", 1743877158, 131_072, 8_192,
              input_modalities=("text", "image")),
    ModelInfo("qwen/qwen3-32b", "Alibaba Cloud", 1748396646, 131_072, 40_960,
              features=("json_mode", "reasoning")),
    ModelInfo("moonshotai/kimi-k2-instruct-0905", "Moonshot AI", 1757046093, 262_144, 16_384),
    ModelInfo("meta-llama/llama-guard-4-12b", "Meta", 1746037200, 131_072, 1_024,
              features=("moderation",), input_modalities=("text", "image")),
    ModelInfo("whisper-large-v3", "OpenAI", 1693721698, 448, 448, features=(),
              input_modalities=("audio",)),
    ModelInfo("whisper-large-v3-turbo", "OpenAI", 1728413088, 448, 448, features=(),
              input_modalities=("audio",)),
)

GUARD_MODEL = "meta-llama/llama-guard-4-12b"
"""Llama Guard 4: answers ``safe`` or ``unsafe\nS1,S2`` (see :mod:`.moderation`)."""
MODEL_ALIASES: dict[str, str] = {"meta-llama/Llama-Guard-4-12B": GUARD_MODEL}
"""Ids the docs also use for a model (Groq's moderation page writes Llama Guard's this way)."""

LORA_BASE_MODELS: frozenset[str] = frozenset({"llama-3.1-8b-instant"})
"""Base models that accept LoRA adapters (Groq's "LoRA Inference" page)."""


@dataclass
class ModelRegistry:
    """Thread-safe id → :class:`ModelInfo`."""

    _models: dict[str, ModelInfo] = field(default_factory=lambda: {m.id: m for m in BASE_MODELS})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, model_id: str) -> ModelInfo | None:
        with self._lock:
            return self._models.get(model_id) or self._models.get(MODEL_ALIASES.get(model_id, ""))

    def require(self, model_id: str) -> ModelInfo:
        """The model, or a 404 ``model_not_found`` problem."""
        found = self.get(model_id)
        if found is None:
            raise model_not_found(model_id)
        return found

    def all(self) -> list[ModelInfo]:
        with self._lock:
            return list(self._models.values())

    def register_adapter(self, model_id: str, *, base_model: str, name: str, created: int) -> ModelInfo:
        base = self.require(base_model)
        info = ModelInfo(
            model_id,
            "organization",
            created,
            base.context_window,
            base.max_completion_tokens,
            base.features,
            base.input_modalities,
            base_model=base_model,
            adapter_name=name,
        )
        with self._lock:
            self._models[model_id] = info
        return info

    def unregister(self, model_id: str) -> None:
        with self._lock:
            self._models.pop(model_id, None)


def _emulator(request: Request) -> Emulator:
    emulator: Emulator = request.app.state.emulator
    return emulator


async def list_models(request: Request) -> JSONResponse:
    data = [m.as_api() for m in _emulator(request).models.all()]
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> JSONResponse:
    model = _emulator(request).models.require(request.path_params["model"])
    return JSONResponse(model.as_api())


routes = [
    Route("/models", list_models, methods=["GET"]),
    Route("/models/{model:path}", retrieve_model, methods=["GET"]),
]
