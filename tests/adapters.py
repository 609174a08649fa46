"""LoRA adapter zips for tests: real safetensors files with tiny tensors, good and broken."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from typing import Any

import numpy as np
from safetensors.numpy import save

GOOD_CONFIG: dict[str, Any] = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                               "peft_type": "LORA"}


def weights(dtype: str = "float16") -> bytes:
    tensors = {
        "base_model.model.layers.0.self_attn.q_proj.lora_A.weight": np.ones((8, 16), dtype=dtype),
        "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((16, 8), dtype=dtype),
    }
    data: bytes = save(tensors)
    return data


def bf16_weights() -> bytes:
    """A safetensors file whose tensors say ``BF16`` (numpy has no bfloat16: patch the header)."""
    data = weights("float16")
    length = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + length].replace(b'"F16"', b'"BF16"')
    return len(header).to_bytes(8, "little") + header + data[8 + length :]


def raw_safetensors(tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> bytes:
    """A safetensors file written by hand: name → (dtype, shape, little-endian bytes). For
    dtypes numpy cannot hold (``BF16``)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(d for _, _, d in tensors.values())


def as_bf16(values: Any) -> bytes:
    """float32 values → bfloat16 bits (truncated, so the bf16 value is exactly known)."""
    bits = (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
    return bits.tobytes()


def adapter_zip(members: dict[str, bytes] | None = None) -> bytes:
    if members is None:
        members = {"adapter_model.safetensors": weights(),
                   "adapter_config.json": json.dumps(GOOD_CONFIG).encode()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def config_bytes(**changes: Any) -> bytes:
    config = {**GOOD_CONFIG, **changes}
    return json.dumps({k: v for k, v in config.items() if v is not None}).encode()


BAD_ADAPTERS: dict[str, tuple[bytes, str]] = {
    "three files": (adapter_zip({"adapter_model.safetensors": weights(),
                                 "adapter_config.json": config_bytes(),
                                 "README.md": b"hi"}), "invalid_adapter_files"),
    "wrong names": (adapter_zip({"model.safetensors": weights(),
                                 "adapter_config.json": config_bytes()}), "invalid_adapter_files"),
    "bf16 tensors": (adapter_zip({"adapter_model.safetensors": bf16_weights(),
                                  "adapter_config.json": config_bytes()}), "invalid_adapter_weights"),
    "float32 tensors": (adapter_zip({"adapter_model.safetensors": weights("float32"),
                                     "adapter_config.json": config_bytes()}),
                        "invalid_adapter_weights"),
    "rank 12": (adapter_zip({"adapter_model.safetensors": weights(),
                             "adapter_config.json": config_bytes(r=12)}), "invalid_adapter_config"),
    "missing lora_alpha": (adapter_zip({"adapter_model.safetensors": weights(),
                                        "adapter_config.json": config_bytes(lora_alpha=None)}),
                           "invalid_adapter_config"),
    "config not json": (adapter_zip({"adapter_model.safetensors": weights(),
                                     "adapter_config.json": b"{r: 8"}), "invalid_adapter_config"),
    "corrupt header": (adapter_zip({"adapter_model.safetensors": b"\xff" * 8 + b"{}",
                                    "adapter_config.json": config_bytes()}),
                       "invalid_adapter_weights"),
    "header not json": (adapter_zip({"adapter_model.safetensors": (6).to_bytes(8, "little") + b"nope!!",
                                     "adapter_config.json": config_bytes()}),
                        "invalid_adapter_weights"),
    "not a zip": (b"PK\x03\x04 this is not really a zip", "invalid_adapter_archive"),
}
