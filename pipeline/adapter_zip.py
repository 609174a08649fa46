"""LoRA adapter zips as Groq takes them, checked without loading a single weight.

    info = check_adapter_zip(Path("adapter.zip"))      # AdapterError names every problem
    print(info.rank, info.alpha, info.base_model, info.tensors)

Groq's "LoRA Inference" wants a zip of exactly ``adapter_model.safetensors`` (every tensor
float16) and ``adapter_config.json`` (``r`` in 8/16/32/64 and a numeric ``lora_alpha``). These
are the checks the server makes (``pipeline/emulator/lora.py``), plus two that save an upload:
the safetensors header must describe the bytes that follow it, and a base model named in the
config (PEFT's ``base_model_name_or_path``) must be one Groq serves adapters on.

Only the zip directory, the safetensors header (8-byte little-endian length + JSON) and the
small config are read, each under a size cap, so a zip bomb costs nothing. Needs no numpy.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import AdapterError

__all__ = [
    "CONFIG",
    "RANKS",
    "SUPPORTED_BASE_MODELS",
    "WEIGHTS",
    "AdapterInfo",
    "HeaderError",
    "SafetensorsHeader",
    "TensorInfo",
    "base_model_problem",
    "check_adapter_zip",
    "config_problems",
    "groq_base_model",
    "parse_config",
    "read_safetensors_header",
]

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
RANKS = (8, 16, 32, 64)
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_CONFIG_BYTES = 1024 * 1024
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""What an adapter's name may be (as the local server enforces it)."""

SUPPORTED_BASE_MODELS: Mapping[str, tuple[str, ...]] = {
    "llama-3.1-8b-instant": ("llama-3.1-8b-instruct", "meta-llama-3.1-8b-instruct"),
}
"""Groq base models that take LoRA adapters → the Hugging Face names an adapter trained on
them may give (last path part, lowercase). Keep in step with the local server's list."""

DTYPE_BYTES: Mapping[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor as the header describes it; offsets count from the start of the data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    data_start: int
    """Where the tensor data begins in the file: 8 + the header's length."""
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] = field(default_factory=dict)


class HeaderError(ValueError):
    """A safetensors header that cannot be read, or that does not describe the file."""


def read_safetensors_header(handle: IO[bytes], size: int) -> SafetensorsHeader:
    """Read and check the header of a safetensors file of ``size`` bytes (from its start)."""
    prefix = handle.read(8)
    if len(prefix) < 8:
        raise HeaderError(f"corrupt safetensors header: {size} bytes is too short to hold one")
    (length,) = struct.unpack("<Q", prefix)
    if length == 0 or length > MAX_HEADER_BYTES or length > size - 8:
        raise HeaderError(f"corrupt safetensors header: it claims {length} bytes "
                          f"but the file holds {size}")
    try:
        header = json.loads(handle.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HeaderError("corrupt safetensors header: not JSON") from None
    if not isinstance(header, dict):
        raise HeaderError("corrupt safetensors header: not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise HeaderError("corrupt safetensors header: `__metadata__` is not an object")
    data_bytes = size - 8 - length
    tensors = tuple(_tensor_info(name, info, data_bytes) for name, info in header.items())
    if not tensors:
        raise HeaderError("holds no tensors")
    return SafetensorsHeader(8 + length, tensors, {str(k): str(v) for k, v in metadata.items()})


def _tensor_info(name: str, info: Any, data_bytes: int) -> TensorInfo:
    def corrupt(why: str) -> HeaderError:
        return HeaderError(f"corrupt safetensors header: tensor `{name}` {why}")

    if not isinstance(info, dict):
        raise corrupt("is not described by an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise corrupt("has no dtype")
    if not isinstance(shape, list) or not all(_natural(n) for n in shape):
        raise corrupt(f"has a bad shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_natural, offsets))
            or not offsets[0] <= offsets[1] <= data_bytes):
        raise corrupt(f"has data_offsets {offsets!r} outside the {data_bytes} bytes of data")
    itemsize = DTYPE_BYTES.get(dtype)
    if itemsize is not None and offsets[1] - offsets[0] != math.prod(shape) * itemsize:
        raise corrupt(f"of shape {shape} and dtype {dtype} does not fit its "
                      f"{offsets[1] - offsets[0]} bytes")
    return TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def groq_base_model(name: str) -> str | None:
    """The Groq base model ``name`` means (a Groq id or a Hugging Face name or path), or None."""
    wanted = name.strip().rstrip("/").lower()
    if wanted in SUPPORTED_BASE_MODELS:
        return wanted
    last = wanted.rsplit("/", 1)[-1]
    for groq_id, aliases in SUPPORTED_BASE_MODELS.items():
        if last == groq_id or last in aliases:
            return groq_id
    return None


def _supported_list() -> str:
    return ", ".join(sorted(SUPPORTED_BASE_MODELS))


def parse_config(raw: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """``adapter_config.json`` → (the object, or None; its problems)."""
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"`{CONFIG}` is not valid JSON ({exc})"]
    if not isinstance(config, dict):
        return None, [f"`{CONFIG}` must be a JSON object"]
    return config, config_problems(config)


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """What Groq would refuse in an adapter config: rank, alpha, and the base model it names."""
    problems: list[str] = []
    rank = config.get("r")
    if "r" not in config:
        problems.append(f"`{CONFIG}` has no rank `r` (one of 8, 16, 32, 64)")
    elif isinstance(rank, bool) or rank not in RANKS:
        problems.append(f"`{CONFIG}`: rank `r` must be one of 8, 16, 32, 64, got {rank!r}")
    alpha = config.get("lora_alpha")
    if "lora_alpha" not in config:
        problems.append(f"`{CONFIG}` has no `lora_alpha` (a number, e.g. twice `r`)")
    elif isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        problems.append(f"`{CONFIG}`: `lora_alpha` must be a number, got {alpha!r}")
    named = config.get("base_model_name_or_path")
    if isinstance(named, str) and named.strip() and groq_base_model(named) is None:
        problems.append(f"`{CONFIG}`: base model {named!r} is not one Groq serves adapters on "
                        f"(supported: {_supported_list()})")
    return problems


def base_model_problem(config: Mapping[str, Any] | None, base_model: str | None) -> str | None:
    """Why ``base_model`` (as asked for) does not fit the config's, or is not supported."""
    if base_model is None:
        return None
    if base_model not in SUPPORTED_BASE_MODELS:
        return (f"base model {base_model!r} does not take LoRA adapters on Groq "
                f"(supported: {_supported_list()})")
    named = (config or {}).get("base_model_name_or_path")
    if isinstance(named, str) and named.strip():
        matched = groq_base_model(named)
        if matched is not None and matched != base_model:
            return (f"`{CONFIG}` names base model {named!r} ({matched}), "
                    f"not the {base_model!r} asked for")
    return None


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """A valid adapter zip, as far as its header and config tell."""

    path: str
    rank: int
    alpha: float
    tensors: int
    weights_bytes: int
    config_base_model: str | None
    """The base model the config names, as written (``base_model_name_or_path``)."""
    base_model: str | None
    """The Groq base model that is, if the config names one."""

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "r": self.rank, "lora_alpha": self.alpha,
                "tensors": self.tensors, "weights_bytes": self.weights_bytes,
                "config_base_model": self.config_base_model, "base_model": self.base_model}


def _read_capped(handle: IO[bytes], limit: int) -> bytes | None:
    data = handle.read(limit + 1)
    return None if len(data) > limit else data


def _weights_problems(archive: zipfile.ZipFile) -> tuple[list[str], SafetensorsHeader | None]:
    member = archive.getinfo(WEIGHTS)
    with archive.open(member) as handle:
        try:
            header = read_safetensors_header(handle, member.file_size)
        except HeaderError as exc:
            return [f"`{WEIGHTS}`: {exc}"], None
    by_dtype: dict[str, list[str]] = {}
    for tensor in header.tensors:
        if tensor.dtype != "F16":
            by_dtype.setdefault(tensor.dtype, []).append(tensor.name)
    problems = []
    for dtype, names in sorted(by_dtype.items()):
        shown = ", ".join(f"`{n}`" for n in names[:3]) + (", …" if len(names) > 3 else "")
        what = "tensor is" if len(names) == 1 else f"{len(names)} tensors are"
        fix = ("; `groqbatch adapters pack` converts them" if dtype in ("BF16", "F32", "F64")
               else "")
        problems.append(f"`{WEIGHTS}`: {what} {dtype}, not float16 (F16): {shown}{fix}")
    return problems, header


def check_adapter_zip(path: Path, *, base_model: str | None = None) -> AdapterInfo:
    """Check an adapter zip as Groq would (and against ``base_model``, if given).

    Raises :class:`AdapterError` listing every problem found, each naming its file.
    """
    problems: list[str] = []
    config: dict[str, Any] | None = None
    header: SafetensorsHeader | None = None
    try:
        with zipfile.ZipFile(path) as archive:
            names = [m.filename for m in archive.infolist() if not m.is_dir()]
            problems += _member_problems(names)
            if WEIGHTS in names:
                weight_problems, header = _weights_problems(archive)
                problems += weight_problems
            if CONFIG in names:
                with archive.open(CONFIG) as handle:
                    raw = _read_capped(handle, MAX_CONFIG_BYTES)
                if raw is None:
                    problems.append(f"`{CONFIG}` is larger than {MAX_CONFIG_BYTES} bytes")
                else:
                    config, config_issues = parse_config(raw)
                    problems += config_issues
    except FileNotFoundError:
        raise AdapterError(["no such file"], path=path) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
            OSError, ValueError) as exc:
        raise AdapterError([f"not a readable zip archive ({exc})"], path=path) from None
    mismatch = base_model_problem(config, base_model)
    if mismatch is not None:
        problems.append(mismatch)
    if problems or config is None or header is None:
        raise AdapterError(problems, path=path)
    named = config.get("base_model_name_or_path")
    named = named if isinstance(named, str) and named.strip() else None
    return AdapterInfo(
        path=str(path), rank=config["r"], alpha=config["lora_alpha"],
        tensors=len(header.tensors), weights_bytes=sum(t.end - t.begin for t in header.tensors),
        config_base_model=named, base_model=groq_base_model(named) if named else None,
    )


def _member_problems(names: list[str]) -> list[str]:
    expected = (WEIGHTS, CONFIG)
    problems = [f"the zip has no `{name}`" for name in expected if name not in names]
    problems += [f"`{name}` is in the zip twice" for name in expected if names.count(name) > 1]
    for name in names:
        if name in expected:
            continue
        if name.rsplit("/", 1)[-1] in expected:
            problems.append(f"`{name}` must be at the top of the zip, not in a folder")
        else:
            problems.append(f"`{name}` does not belong in the zip")
    if problems:
        found = ", ".join(f"`{n}`" for n in names) or "nothing"
        problems.insert(0, f"the zip must hold exactly `{WEIGHTS}` and `{CONFIG}`, "
                           f"found {len(names)} file(s): {found}")
    return problems
