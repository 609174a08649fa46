"""LoRA adapters: ``/v1/fine_tunings`` (create, list, retrieve, delete), as Groq's LoRA Inference.

An adapter is a zip uploaded with ``purpose=fine_tuning`` holding exactly
``adapter_model.safetensors`` (every tensor ``F16``) and ``adapter_config.json`` (``r`` in
8/16/32/64, numeric ``lora_alpha``). The archive is checked without loading weights: only the
zip directory, the safetensors header and the small config are read, each with a size cap,
so a zip bomb costs nothing. A valid adapter registers ``ft:<base>:<org>/<name>-<12 hex>``
as a model that chat and batch requests accept until the fine tuning is deleted.
"""

from __future__ import annotations

import json
import re
import secrets
import struct
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from .errors import APIProblem, bad_request, not_found
from .http import JSONResponse, json_body
from .ids import new_id
from .models import LORA_BASE_MODELS

if TYPE_CHECKING:
    from .server import Emulator

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
RANKS = frozenset({8, 16, 32, 64})
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_CONFIG_BYTES = 1024 * 1024
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class FineTuning:
    id: str
    name: str
    base_model: str
    type: str
    input_file_id: str
    created_at: int
    fine_tuned_model: str

    def data(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "base_model": self.base_model,
            "type": self.type,
            "input_file_id": self.input_file_id,
            "created_at": self.created_at,
            "fine_tuned_model": self.fine_tuned_model,
        }

    def as_api(self) -> dict[str, Any]:
        return {"id": self.id, "object": "fine_tuning", "data": self.data()}


def _archive_problem(message: str, code: str) -> APIProblem:
    return bad_request(message, param="input_file_id", code=code)


def _read_capped(handle: IO[bytes], limit: int, what: str) -> bytes:
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise _archive_problem(f"{what} is larger than {limit} bytes", "invalid_adapter_archive")
    return data


def _check_weights(handle: IO[bytes], size: int) -> None:
    prefix = handle.read(8)
    if len(prefix) < 8:
        raise _archive_problem(f"`{WEIGHTS}` is too short to hold a safetensors header",
                               "invalid_adapter_weights")
    (length,) = struct.unpack("<Q", prefix)
    if length == 0 or length > MAX_HEADER_BYTES or length > size - 8:
        raise _archive_problem(f"`{WEIGHTS}` has a corrupt safetensors header (length {length})",
                               "invalid_adapter_weights")
    raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise _archive_problem(f"`{WEIGHTS}` has a corrupt safetensors header (not a JSON object)",
                               "invalid_adapter_weights")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise _archive_problem(f"`{WEIGHTS}` holds no tensors", "invalid_adapter_weights")
    for name, info in tensors.items():
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if dtype != "F16":
            raise _archive_problem(
                f"`{WEIGHTS}`: tensor `{name}` has dtype {dtype}; adapters must be float16 (F16)",
                "invalid_adapter_weights",
            )


def _check_config(raw: bytes) -> None:
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _archive_problem(f"`{CONFIG}` is not valid JSON", "invalid_adapter_config") from None
    if not isinstance(config, dict):
        raise _archive_problem(f"`{CONFIG}` must be a JSON object", "invalid_adapter_config")
    rank = config.get("r")
    if isinstance(rank, bool) or rank not in RANKS:
        raise _archive_problem(f"`{CONFIG}`: rank `r` must be one of 8, 16, 32, 64, got {rank!r}",
                               "invalid_adapter_config")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise _archive_problem(f"`{CONFIG}`: `lora_alpha` must be a number, got {alpha!r}",
                               "invalid_adapter_config")


def check_adapter_zip(path: Path) -> None:
    """Raise a 400 :class:`APIProblem` naming what is wrong with the adapter archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            names = sorted(m.filename for m in members)
            if names != sorted([CONFIG, WEIGHTS]):
                raise _archive_problem(
                    f"the adapter zip must hold exactly `{WEIGHTS}` and `{CONFIG}`, "
                    f"found {len(names)} file(s): {', '.join(names) or 'none'}",
                    "invalid_adapter_files",
                )
            weights = archive.getinfo(WEIGHTS)
            with archive.open(weights) as handle:
                _check_weights(handle, weights.file_size)
            with archive.open(CONFIG) as handle:
                _check_config(_read_capped(handle, MAX_CONFIG_BYTES, f"`{CONFIG}`"))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
            OSError, ValueError) as exc:
        raise _archive_problem(f"the input file is not a readable zip archive: {exc}",
                               "invalid_adapter_archive") from None


class FineTuningStore:
    """Live adapters by id; registers and unregisters their models."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._items: dict[str, FineTuning] = {}
        self._lock = threading.Lock()

    def all(self) -> list[FineTuning]:
        with self._lock:
            return list(self._items.values())

    def require(self, ft_id: str) -> FineTuning:
        with self._lock:
            found = self._items.get(ft_id)
        if found is None:
            raise not_found("Fine tuning", ft_id, code="fine_tuning_not_found")
        return found

    def validate_body(self, body: dict[str, Any]) -> tuple[str, str, str]:
        for field in ("input_file_id", "name", "type", "base_model"):
            if not isinstance(body.get(field), str) or not body[field]:
                raise bad_request(f"`{field}` is required and must be a string", param=field,
                                  code="missing_required_parameter")
        if body["type"] != "lora":
            raise bad_request(f"`type` must be `lora`, got `{body['type']}`", param="type",
                              code="unsupported_fine_tuning_type")
        base = body["base_model"]
        if base not in LORA_BASE_MODELS:
            raise bad_request(
                f"`base_model` `{base}` does not support LoRA adapters; supported: "
                + ", ".join(sorted(LORA_BASE_MODELS)),
                param="base_model", code="unsupported_base_model",
            )
        name = body["name"]
        if not NAME.fullmatch(name):
            raise bad_request(
                "`name` must be 1-64 letters, digits, `.`, `_` or `-`, starting with a letter "
                "or digit", param="name", code="invalid_name",
            )
        if any(item.name == name for item in self.all()):
            raise bad_request(f"an adapter named `{name}` already exists", param="name",
                              code="duplicate_name")
        file_id = body["input_file_id"]
        stored = self.emulator.files.get(file_id)
        if stored is None:
            raise bad_request(f"File `{file_id}` does not exist", param="input_file_id",
                              code="file_not_found")
        if stored.purpose != "fine_tuning":
            raise bad_request(
                f"File `{file_id}` has purpose `{stored.purpose}`; upload adapters with "
                "purpose `fine_tuning`", param="input_file_id", code="invalid_file_purpose",
            )
        return name, base, file_id

    async def create(self, body: dict[str, Any]) -> FineTuning:
        name, base, file_id = self.validate_body(body)
        await anyio.to_thread.run_sync(check_adapter_zip, self.emulator.files.require(file_id).path)
        emulator = self.emulator
        model_id = f"ft:{base}:{emulator.config.organization}/{name}-{secrets.token_hex(6)}"
        created = emulator.clock.now_int()
        item = FineTuning(new_id("ft"), name, base, "lora", file_id, created, model_id)
        with self._lock:
            if any(other.name == name for other in self._items.values()):
                raise bad_request(f"an adapter named `{name}` already exists", param="name",
                                  code="duplicate_name")
            self._items[item.id] = item
        emulator.models.register_adapter(model_id, base_model=base, name=name, created=created)
        if emulator.persist is not None:
            emulator.persist.save_fine_tuning(item)
        return item

    def restore(self, item: FineTuning) -> None:
        """Take back an adapter saved by an earlier process, and serve its ``ft:`` model again."""
        with self._lock:
            self._items[item.id] = item
        self.emulator.models.register_adapter(item.fine_tuned_model, base_model=item.base_model,
                                              name=item.name, created=item.created_at)

    def delete(self, ft_id: str) -> FineTuning:
        with self._lock:
            item = self._items.pop(ft_id, None)
        if item is None:
            raise not_found("Fine tuning", ft_id, code="fine_tuning_not_found")
        self.emulator.models.unregister(item.fine_tuned_model)
        if self.emulator.persist is not None:
            self.emulator.persist.delete_fine_tuning(ft_id)
        return item


def _store(request: Request) -> FineTuningStore:
    emulator: Emulator = request.app.state.emulator
    return emulator.fine_tunings


async def create_fine_tuning(request: Request) -> JSONResponse:
    item = await _store(request).create(await json_body(request))
    return JSONResponse(item.as_api())


async def list_fine_tunings(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [i.data() for i in _store(request).all()]})


async def retrieve_fine_tuning(request: Request) -> JSONResponse:
    return JSONResponse(_store(request).require(request.path_params["ft_id"]).as_api())


async def delete_fine_tuning(request: Request) -> JSONResponse:
    item = _store(request).delete(request.path_params["ft_id"])
    return JSONResponse({"id": item.id, "object": "fine_tuning", "deleted": True})


routes: list[BaseRoute] = [
    Route("/fine_tunings", create_fine_tuning, methods=["POST"]),
    Route("/fine_tunings", list_fine_tunings, methods=["GET"]),
    Route("/fine_tunings/{ft_id}", retrieve_fine_tuning, methods=["GET"]),
    Route("/fine_tunings/{ft_id}", delete_fine_tuning, methods=["DELETE"]),
]
