"""Packing PEFT adapter folders and validating adapter zips, on real safetensors files."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load, save

from pipeline.adapter_pack import bfloat16_to_float32, pack_adapter
from pipeline.adapter_zip import (
    CONFIG,
    SUPPORTED_BASE_MODELS,
    WEIGHTS,
    check_adapter_zip,
    groq_base_model,
)
from pipeline.emulator.models import LORA_BASE_MODELS
from pipeline.errors import AdapterError, ConfigError
from tests.adapters import (
    BAD_ADAPTERS,
    adapter_zip,
    as_bf16,
    config_bytes,
    raw_safetensors,
    weights,
)

A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
CONFIG_OBJ: dict[str, Any] = {"r": 16, "lora_alpha": 32, "peft_type": "LORA",
                              "base_model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct",
                              "target_modules": ["q_proj", "v_proj"]}
# Exactly representable in bfloat16 and in float16 alike.
EXACT = np.array([0.0, 0.5, -2.0, 1.5, 0.09375, -0.0078125, 65280.0, -31.5, 2.0**-20, 6.0],
                 dtype=np.float32)


def bf16_value(values: np.ndarray) -> np.ndarray:
    return ((values.astype(np.float32).view(np.uint32) >> 16) << 16).view(np.float32)


def peft_folder(root: Path, weights_bytes: bytes | None, config: dict[str, Any] | None = None,
                *, weights_name: str = WEIGHTS) -> Path:
    folder = root / "peft"
    folder.mkdir()
    (folder / "README.md").write_text("# my adapter\n")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")
    if weights_bytes is not None:
        (folder / weights_name).write_bytes(weights_bytes)
    (folder / CONFIG).write_text(json.dumps(CONFIG_OBJ if config is None else config))
    return folder


def np_weights(dtype: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {A: rng.normal(0, 0.02, (16, 32)).astype(dtype),
            B: rng.normal(0, 0.02, (32, 16)).astype(dtype)}


def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# -- pack ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_pack_each_numpy_dtype(tmp_path: Path, dtype: str) -> None:
    source = np_weights(dtype)
    folder = peft_folder(tmp_path, save(source, metadata={"format": "pt"}))
    report = pack_adapter(folder, tmp_path / "adapter.zip")
    members = zip_members(tmp_path / "adapter.zip")
    assert sorted(members) == sorted([WEIGHTS, CONFIG])
    assert members[CONFIG] == (folder / CONFIG).read_bytes()  # the config goes in as written
    packed = load(members[WEIGHTS])
    assert {name: a.dtype for name, a in packed.items()} == {A: np.float16, B: np.float16}
    for name, original in source.items():
        np.testing.assert_array_equal(packed[name], original.astype(np.float16))
    expected = {} if dtype == "float16" else {{"float32": "F32", "float64": "F64"}[dtype]: 2}
    assert report.converted == expected
    assert report.left_out == ["README.md", "tokenizer.json", "tokenizer_config.json"]
    assert (report.tensors, report.rank, report.alpha) == (2, 16, 32)
    assert report.base_model == "llama-3.1-8b-instant"
    check_adapter_zip(tmp_path / "adapter.zip", base_model="llama-3.1-8b-instant")


def test_bf16_conversion_is_exact_where_float16_can_be(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    noisy = rng.normal(0, 0.05, 4096).astype(np.float32)
    folder = peft_folder(tmp_path, raw_safetensors({
        A: ("BF16", (2, 5), as_bf16(EXACT)),
        B: ("BF16", (64, 64), as_bf16(noisy)),
    }))
    report = pack_adapter(folder, tmp_path / "adapter.zip")
    assert report.converted == {"BF16": 2}
    assert any("converted 2 BF16" in note for note in report.notes)
    packed = load(zip_members(tmp_path / "adapter.zip")[WEIGHTS])
    np.testing.assert_array_equal(packed[A].astype(np.float32), EXACT.reshape(2, 5))
    truth = bf16_value(noisy).reshape(64, 64)
    got = packed[B].astype(np.float32)
    # float16 keeps 11 significant bits: round-to-nearest is within half an ulp (2^-11 relative)
    # for normal values, and within half the smallest subnormal (2^-25) below them.
    tolerance = np.maximum(np.abs(truth) * 2.0**-11, 2.0**-25)
    assert np.all(np.abs(got - truth) <= tolerance)


def test_bfloat16_bits() -> None:
    bits = np.array([0x3F80, 0xC000, 0x0000, 0x8000, 0x7F80, 0x3DCC], dtype="<u2")
    values = bfloat16_to_float32(bits)
    assert values.dtype == np.float32
    assert values[:5].tolist() == [1.0, -2.0, 0.0, -0.0, float("inf")]
    assert np.signbit(values[3])
    assert values[5] == np.float32(0.099609375)  # 0.1 truncated to bf16


def test_pack_prefers_safetensors_over_bin(tmp_path: Path) -> None:
    folder = peft_folder(tmp_path, save(np_weights("float16")))
    (folder / "adapter_model.bin").write_bytes(b"\x80\x02pickle")
    report = pack_adapter(folder, tmp_path / "adapter.zip")
    assert "adapter_model.bin" in report.left_out
    assert any("adapter_model.bin` left out" in note for note in report.notes)


REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "bin only": ({"weights_name": "adapter_model.bin"}, "convert to safetensors first"),
    "rank 12": ({"config": {**CONFIG_OBJ, "r": 12}}, "rank `r` must be one of 8, 16, 32, 64, got 12"),
    "no lora_alpha": ({"config": {"r": 8}}, "has no `lora_alpha`"),
    "alpha not a number": ({"config": {"r": 8, "lora_alpha": "16"}},
                           "`lora_alpha` must be a number, got '16'"),
    "foreign base model": ({"config": {**CONFIG_OBJ, "base_model_name_or_path": "mistralai/Mistral-7B-v0.1"}},
                           "'mistralai/Mistral-7B-v0.1' is not one Groq serves adapters on"),
    "no weights": ({"weights": None}, "no `adapter_model.safetensors` (nor `adapter_model.bin`)"),
    "int8 tensor": ({"weights": raw_safetensors({A: ("I8", (4,), b"\x01\x02\x03\x04")})},
                    f"tensor `{A}` is I8; only float tensors"),
    "beyond float16": ({"weights": raw_safetensors({B: ("BF16", (2,), as_bf16(np.array([1.0, 1e5])))})},
                       f"tensor `{B}` has values up to 99840, beyond float16's ±65504"),
    "nan": ({"weights": save({A: np.array([1.0, np.nan], dtype=np.float32)})},
            f"tensor `{A}` holds 1 NaN or infinite values"),
    "corrupt header": ({"weights": b"\xff" * 8 + b"{}"}, "corrupt safetensors header"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_pack_refuses_what_cannot_be_made_right(tmp_path: Path, case: str) -> None:
    options, message = REFUSALS[case]
    options = dict(options)
    content = options.pop("weights", save(np_weights("float16")))
    folder = peft_folder(tmp_path, content, **options)
    with pytest.raises(AdapterError) as caught:
        pack_adapter(folder, tmp_path / "adapter.zip")
    assert message in str(caught.value)
    assert str(folder) in str(caught.value)  # the folder or the file in it is named
    assert caught.value.exit_code == 2
    assert not (tmp_path / "adapter.zip").exists()


def test_pack_checks_the_base_model_asked_for(tmp_path: Path) -> None:
    folder = peft_folder(tmp_path, save(np_weights("float16")))
    with pytest.raises(AdapterError, match="does not take LoRA adapters on Groq"):
        pack_adapter(folder, tmp_path / "a.zip", base_model="llama-3.3-70b-versatile")
    with pytest.raises(ConfigError, match="not a folder"):
        pack_adapter(tmp_path / "nowhere", tmp_path / "a.zip")


# -- validate --------------------------------------------------------------------------------------

FOLDERED = adapter_zip({f"out/{WEIGHTS}": weights(), f"out/{CONFIG}": config_bytes()})
BAD_ZIPS: dict[str, tuple[bytes, str]] = {
    "three files": (BAD_ADAPTERS["three files"][0], "`README.md` does not belong in the zip"),
    "wrong names": (BAD_ADAPTERS["wrong names"][0], "the zip has no `adapter_model.safetensors`"),
    "bf16 tensors": (BAD_ADAPTERS["bf16 tensors"][0],
                     "2 tensors are BF16, not float16 (F16)"),
    "float32 tensors": (BAD_ADAPTERS["float32 tensors"][0], "2 tensors are F32, not float16 (F16)"),
    "rank 12": (BAD_ADAPTERS["rank 12"][0], "rank `r` must be one of 8, 16, 32, 64, got 12"),
    "missing lora_alpha": (BAD_ADAPTERS["missing lora_alpha"][0], "has no `lora_alpha`"),
    "config not json": (BAD_ADAPTERS["config not json"][0], "`adapter_config.json` is not valid JSON"),
    "corrupt header": (BAD_ADAPTERS["corrupt header"][0],
                       "corrupt safetensors header: it claims 18446744073709551615 bytes"),
    "header not json": (BAD_ADAPTERS["header not json"][0], "corrupt safetensors header: not JSON"),
    "not a zip": (BAD_ADAPTERS["not a zip"][0], "not a readable zip archive"),
    "base model mismatch": (
        adapter_zip({WEIGHTS: weights(),
                     CONFIG: config_bytes(base_model_name_or_path="Qwen/Qwen2.5-7B-Instruct")}),
        "'Qwen/Qwen2.5-7B-Instruct' is not one Groq serves adapters on"),
    "in a folder": (FOLDERED, f"`out/{WEIGHTS}` must be at the top of the zip"),
    "offsets beyond the data": (
        adapter_zip({WEIGHTS: weights()[:-8], CONFIG: config_bytes()}), "outside the"),
}


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_each_bad_zip_has_its_own_message(tmp_path: Path, case: str) -> None:
    content, message = BAD_ZIPS[case]
    path = tmp_path / "adapter.zip"
    path.write_bytes(content)
    with pytest.raises(AdapterError) as caught:
        check_adapter_zip(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{path}: ")
    assert caught.value.exit_code == 2


def test_bad_zip_messages_are_distinct(tmp_path: Path) -> None:
    seen: dict[str, str] = {}
    for case, (content, _) in BAD_ZIPS.items():
        path = tmp_path / f"{len(seen)}.zip"
        path.write_bytes(content)
        with pytest.raises(AdapterError) as caught:
            check_adapter_zip(path)
        message = str(caught.value).split(": ", 1)[1]
        assert message not in seen, (case, seen.get(message))
        seen[message] = case


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    path = tmp_path / "adapter.zip"
    path.write_bytes(adapter_zip({WEIGHTS: weights("float32"),
                                  CONFIG: config_bytes(r=12, lora_alpha=None)}))
    with pytest.raises(AdapterError) as caught:
        check_adapter_zip(path)
    assert len(caught.value.problems) == 3
    assert "3 problems" in str(caught.value)


def test_a_good_zip(tmp_path: Path) -> None:
    path = tmp_path / "adapter.zip"
    path.write_bytes(adapter_zip({WEIGHTS: weights(), CONFIG: config_bytes(
        base_model_name_or_path="/models/Meta-Llama-3.1-8B-Instruct/")}))
    info = check_adapter_zip(path)
    assert (info.rank, info.alpha, info.tensors, info.weights_bytes) == (8, 16, 2, 512)
    assert info.base_model == "llama-3.1-8b-instant"
    check_adapter_zip(path, base_model="llama-3.1-8b-instant")
    with pytest.raises(AdapterError, match="does not take LoRA adapters"):
        check_adapter_zip(path, base_model="llama-3.3-70b-versatile")


def test_validate_reads_no_weights(tmp_path: Path) -> None:
    # A header that says F16 in front of data never read: the check passes on the header alone.
    path = tmp_path / "adapter.zip"
    header = json.dumps({A: {"dtype": "F16", "shape": [1024, 1024], "data_offsets": [0, 2 << 20]}})
    body = struct.pack("<Q", len(header)) + header.encode() + bytes(2 << 20)
    path.write_bytes(adapter_zip({WEIGHTS: body, CONFIG: config_bytes()}))
    assert check_adapter_zip(path).weights_bytes == 2 << 20


def test_base_model_names() -> None:
    assert set(SUPPORTED_BASE_MODELS) == set(LORA_BASE_MODELS)  # in step with the local server
    assert groq_base_model("meta-llama/Llama-3.1-8B-Instruct") == "llama-3.1-8b-instant"
    assert groq_base_model("unsloth/Meta-Llama-3.1-8B-Instruct") == "llama-3.1-8b-instant"
    assert groq_base_model("llama-3.1-8b-instant") == "llama-3.1-8b-instant"
    assert groq_base_model("meta-llama/Llama-3.1-70B-Instruct") is None
