"""Pack a PEFT-style adapter folder into the zip Groq takes.

    report = pack_adapter(Path("out/checkpoint-final"), Path("adapter.zip"))
    print(report.converted)        # {"BF16": 128}: tensors converted to float16

A fine-tuning tool's output folder usually holds a README, tokenizer files,
``adapter_model.safetensors`` (or ``.bin``) and ``adapter_config.json``. The zip gets exactly
the weights, every tensor float16 (BF16, F32 and F64 tensors are converted, and the report
says so), and the config as it was written. What cannot be made right is refused, with why:
a rank Groq does not serve, no ``lora_alpha``, a torch pickle (``.bin``: reading one safely
needs torch, which groqbatch does not use), integer tensors, or values beyond float16's range.

Needs numpy and safetensors: ``pip install 'groqbatch[lora]'``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .adapter_zip import (
    CONFIG,
    WEIGHTS,
    HeaderError,
    base_model_problem,
    check_adapter_zip,
    groq_base_model,
    parse_config,
    read_safetensors_header,
)
from .errors import AdapterError, ConfigError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["PackReport", "bfloat16_to_float32", "pack_adapter", "to_float16"]

FLOAT16_MAX = 65504.0
CONVERTIBLE = {"F16": "<f2", "BF16": "<u2", "F32": "<f4", "F64": "<f8"}
"""safetensors dtypes pack can make float16, and how their little-endian bytes are read."""
BIN_WEIGHTS = "adapter_model.bin"
CONVERT_BIN_HINT = (
    "convert to safetensors first: python -c \"import torch; from safetensors.torch import "
    "save_file; save_file(torch.load('adapter_model.bin', map_location='cpu', "
    "weights_only=True), 'adapter_model.safetensors')\" (or save with "
    "`model.save_pretrained(dir, safe_serialization=True)`)"
)


@dataclass(frozen=True, slots=True)
class PackReport:
    output: str
    tensors: int
    converted: dict[str, int]
    """Source dtype → how many tensors were converted from it to float16."""
    left_out: list[str]
    """Files of the folder that do not go into the zip (README, tokenizer files, …)."""
    rank: int
    alpha: float
    base_model: str | None
    bytes: int
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"output": self.output, "tensors": self.tensors, "converted": self.converted,
                "left_out": self.left_out, "r": self.rank, "lora_alpha": self.alpha,
                "base_model": self.base_model, "bytes": self.bytes, "notes": self.notes}


def _numpy() -> Any:
    try:
        import numpy
        import safetensors.numpy  # noqa: F401  (checked here, used in _write_zip)
    except ImportError as exc:
        raise ConfigError(f"packing an adapter needs numpy and safetensors ({exc.name} is "
                          "not installed)", hint="pip install 'groqbatch[lora]'") from None
    return numpy


def bfloat16_to_float32(bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """bfloat16 values (as their raw 16 bits) → float32, exactly: bf16 is float32's top half."""
    numpy = _numpy()
    widened: npt.NDArray[np.uint32] = bits.astype(numpy.uint32) << numpy.uint32(16)
    result: npt.NDArray[np.float32] = widened.view(numpy.float32)
    return result


def to_float16(raw: bytes, dtype: str, shape: tuple[int, ...], name: str) -> npt.NDArray[np.float16]:
    """One tensor's little-endian bytes, of safetensors ``dtype``, as a float16 array.

    Raises :class:`ValueError` naming the tensor when it cannot be float16: an integer dtype,
    NaN or infinite values, or a value beyond ±65504 (it would become infinite).
    """
    numpy = _numpy()
    if dtype not in CONVERTIBLE:
        raise ValueError(f"tensor `{name}` is {dtype}; only float tensors "
                         f"({', '.join(CONVERTIBLE)}) can be made float16")
    values = numpy.frombuffer(raw, dtype=CONVERTIBLE[dtype])
    if dtype == "BF16":
        values = bfloat16_to_float32(values)
    finite = numpy.isfinite(values)
    if not finite.all():
        raise ValueError(f"tensor `{name}` holds {int((~finite).sum())} NaN or infinite values")
    with numpy.errstate(over="ignore"):
        half = values.astype("<f2")
    if not numpy.isfinite(half).all():
        biggest = float(numpy.abs(values).max())
        raise ValueError(f"tensor `{name}` has values up to {biggest:.6g}, beyond float16's "
                         f"±{FLOAT16_MAX:g}: it cannot be float16")
    result: npt.NDArray[np.float16] = half.reshape(shape)
    return result


def _config_bytes(folder: Path, base_model: str | None) -> tuple[bytes, dict[str, Any]]:
    path = folder / CONFIG
    if not path.is_file():
        raise AdapterError([f"no `{CONFIG}` (it gives the rank `r` and `lora_alpha`)"], path=folder)
    raw = path.read_bytes()
    config, problems = parse_config(raw)
    mismatch = base_model_problem(config, base_model)
    problems += [mismatch] if mismatch else []
    if problems or config is None:
        raise AdapterError(problems, path=path)
    return raw, config


def _weights_path(folder: Path) -> Path:
    path = folder / WEIGHTS
    if path.is_file():
        return path
    if (folder / BIN_WEIGHTS).is_file():
        raise AdapterError([f"the weights are `{BIN_WEIGHTS}`, a torch pickle groqbatch does not "
                            "read (unpickling it safely needs torch)"],
                           path=folder / BIN_WEIGHTS, hint=CONVERT_BIN_HINT)
    raise AdapterError([f"no `{WEIGHTS}` (nor `{BIN_WEIGHTS}`)"], path=folder)


def _read_tensors(path: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, int]]:
    """The tensors of a safetensors file as float16 arrays, its metadata, and what converted."""
    tensors: dict[str, Any] = {}
    converted: dict[str, int] = {}
    problems: list[str] = []
    with path.open("rb") as handle:
        try:
            header = read_safetensors_header(handle, path.stat().st_size)
        except HeaderError as exc:
            raise AdapterError([str(exc)], path=path) from None
        for tensor in header.tensors:
            handle.seek(header.data_start + tensor.begin)
            try:
                tensors[tensor.name] = to_float16(handle.read(tensor.end - tensor.begin),
                                                  tensor.dtype, tensor.shape, tensor.name)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if tensor.dtype != "F16":
                converted[tensor.dtype] = converted.get(tensor.dtype, 0) + 1
    if problems:
        raise AdapterError(problems, path=path)
    return tensors, header.metadata, converted


def _write_zip(output: Path, config_raw: bytes, weights: bytes) -> None:
    import zipfile

    output.parent.mkdir(parents=True, exist_ok=True)
    part = output.with_name(output.name + ".part")
    try:
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(WEIGHTS, weights)
            archive.writestr(CONFIG, config_raw)
        os.replace(part, output)
    finally:
        part.unlink(missing_ok=True)


def pack_adapter(folder: Path, output: Path, *, base_model: str | None = None) -> PackReport:
    """Build Groq's adapter zip at ``output`` from a PEFT-style ``folder``; say what changed.

    Raises :class:`AdapterError` (a :class:`ConfigError`) naming the file and every reason
    the folder cannot become a valid adapter.
    """
    if not folder.is_dir():
        raise ConfigError("not a folder (pack takes the folder a fine-tuning tool wrote)",
                          path=folder)
    config_raw, config = _config_bytes(folder, base_model)
    weights_path = _weights_path(folder)
    _numpy()
    from safetensors.numpy import save

    tensors, metadata, converted = _read_tensors(weights_path)
    _write_zip(output, config_raw, save(tensors, metadata=metadata or None))
    info = check_adapter_zip(output, base_model=base_model)  # what we wrote is what Groq takes
    kept = {CONFIG, WEIGHTS}
    left_out = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                      if p.name not in kept and p.resolve() != output.resolve())
    notes = [f"converted {count} {dtype} tensor(s) to float16" for dtype, count in
             sorted(converted.items())]
    if (folder / BIN_WEIGHTS).is_file():
        notes.append(f"used `{WEIGHTS}`; `{BIN_WEIGHTS}` left out")
    named = config.get("base_model_name_or_path")
    return PackReport(
        output=str(output), tensors=info.tensors, converted=converted, left_out=left_out,
        rank=info.rank, alpha=info.alpha,
        base_model=base_model or (groq_base_model(named) if isinstance(named, str) else None),
        bytes=output.stat().st_size, notes=notes,
    )
