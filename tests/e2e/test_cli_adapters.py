"""``groqbatch adapters …`` as a user runs them: from a fine-tuning tool's folder to batch jobs
on the adapter, and back to a job that fails at ``validate`` once its adapter is deleted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from state import Ledger, RequestStatus
from tests.adapters import BAD_ADAPTERS, adapter_zip, as_bf16, raw_safetensors
from tests.e2e.cli import ServeProcess, run_cli

A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
PEFT_CONFIG = {"r": 16, "lora_alpha": 32, "peft_type": "LORA", "target_modules": ["q_proj"],
               "base_model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"}


def peft_folder(root: Path, weights: bytes, name: str = "adapter_model.safetensors") -> Path:
    """What a fine-tuning tool leaves behind."""
    folder = root / "checkpoint-final"
    folder.mkdir()
    (folder / name).write_bytes(weights)
    (folder / "adapter_config.json").write_text(json.dumps(PEFT_CONFIG))
    (folder / "README.md").write_text("# support adapter\n")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def bf16_weights() -> bytes:
    rng = np.random.default_rng(5)
    return raw_safetensors({A: ("BF16", (16, 32), as_bf16(rng.normal(0, 0.02, 512))),
                            B: ("BF16", (32, 16), as_bf16(rng.normal(0, 0.02, 512)))})


def write_job(folder: Path, name: str, *, policy: str = "", local: str = "",
              user: str = "{{ text }}") -> Path:
    rows = folder / "rows.jsonl"
    if not rows.exists():
        rows.write_text("".join(json.dumps({"id": i, "text": f"ticket {i}"}) + "\n" for i in range(8)))
    config = folder / f"{name}.toml"
    config.write_text(
        f'name = "{name}"\nbackend = "local"\nadapter = "support"\nledger = "shared.sqlite"\n'
        f'[input]\npath = "rows.jsonl"\nid_column = "id"\n[prompt]\nuser = "{user}"\n'
        f'[policy]\nmax_lines_per_shard = 3\npoll_interval_min_s = 0.05\npoll_interval_max_s = 0.2\n'
        f'{policy}[local]\ndata_dir = "server"\ntime_scale = 36000\n{local}'
    )
    return config


def answers(ledger_path: Path, job: str) -> list[tuple[str, str]]:
    with Ledger.open(ledger_path) as ledger:
        ids = [r.custom_id for r in ledger.iter_requests(job, RequestStatus.SUCCEEDED)]
        found = []
        for result in ledger.results_for(ids):
            body: Any = json.loads(result.body or b"{}")
            found.append((result.source.value, body["choices"][0]["message"]["content"]))
    return found


def ok(*args: str, cwd: Path | None = None) -> str:
    result = run_cli(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_from_a_tool_folder_to_jobs_on_the_adapter(tmp_path: Path) -> None:
    folder = peft_folder(tmp_path, bf16_weights())
    zip_path = tmp_path / "adapter.zip"
    packed = run_cli("adapters", "pack", str(folder), "-o", str(zip_path))
    assert packed.returncode == 0, packed.stderr
    assert "converted 2 BF16 tensor(s) to float16" in packed.stderr
    assert "left out README.md, tokenizer.json" in packed.stderr
    assert "2 float16 tensors, r=16, lora_alpha=32, base model llama-3.1-8b-instant" in packed.stdout
    assert "a valid Groq LoRA adapter" in ok("adapters", "validate", str(zip_path))

    batch_job = write_job(tmp_path, "by-batch", local='scenario = "expire.toml"\n')
    (tmp_path / "expire.toml").write_text("[batch]\nexpire_after_fraction = 0.5\n")
    sync_job = write_job(tmp_path, "by-sync", policy='mode = "sync"\n', user="again: {{ text }}")
    before = run_cli("validate", str(batch_job))
    assert before.returncode == 2
    assert "unknown adapter 'support'" in before.stderr

    model = ok("adapters", "upload", str(zip_path), "--name", "support", "--config", str(batch_job))
    model = model.strip()
    assert model.startswith("ft:llama-3.1-8b-instant:")
    listed = json.loads(ok("adapters", "list", "--config", str(batch_job), "--json"))
    assert [(a["name"], a["model_id"]) for a in listed["adapters"]] == [("support", model)]
    shown = json.loads(ok("adapters", "show", "support", "--config", str(sync_job), "--json"))
    assert shown["remote"]["fine_tuned_model"] == model

    assert "is valid" in ok("validate", str(batch_job), str(sync_job))
    assert json.loads(ok("plan", "--json", str(batch_job)))["compile"]["model"] == model

    summary = json.loads(ok("run", "--json", "--quiet", str(batch_job)))
    assert summary["model"] == model
    assert summary["requests"]["succeeded"] == 8
    got = answers(tmp_path / "shared.sqlite", "by-batch")
    assert len(got) == 8
    assert all(text.startswith("[LoRA support]") for _, text in got)  # the adapter answered
    assert {source for source, _ in got} == {"batch", "flex"}  # expired leftovers went to flex

    summary = json.loads(ok("run", "--json", "--quiet", str(sync_job)))
    assert summary["requests"]["succeeded"] == 8
    got = answers(tmp_path / "shared.sqlite", "by-sync")
    assert all(text.startswith("[LoRA support]") for _, text in got)
    assert {source for source, _ in got} == {"flex"}

    assert "adapter 'support' deleted" in ok("adapters", "delete", "support", "--config", str(batch_job))
    for command in ("validate", "plan", "run"):
        failed = run_cli(command, str(sync_job))
        assert failed.returncode == 2, (command, failed.stderr)
        assert "unknown adapter 'support': it was deleted" in failed.stderr
    assert json.loads(ok("adapters", "list", "--config", str(batch_job), "--json"))["adapters"] == []


@pytest.mark.parametrize(("case", "message"), [
    ("three files", "`README.md` does not belong in the zip"),
    ("wrong names", "the zip has no `adapter_model.safetensors`"),
    ("bf16 tensors", "2 tensors are BF16, not float16 (F16)"),
    ("rank 12", "rank `r` must be one of 8, 16, 32, 64, got 12"),
    ("missing lora_alpha", "has no `lora_alpha`"),
    ("corrupt header", "corrupt safetensors header"),
    ("not a zip", "not a readable zip archive"),
])
def test_validate_names_each_problem(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "adapter.zip"
    path.write_bytes(BAD_ADAPTERS[case][0])
    result = run_cli("adapters", "validate", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: ")
    assert message in result.stderr


def test_pack_refuses_a_torch_pickle(tmp_path: Path) -> None:
    folder = peft_folder(tmp_path, b"\x80\x02not really torch", name="adapter_model.bin")
    result = run_cli("adapters", "pack", str(folder), "-o", str(tmp_path / "a.zip"))
    assert result.returncode == 2
    assert "adapter_model.bin" in result.stderr
    assert "convert to safetensors first" in result.stderr


def test_a_ledger_and_a_running_server(tmp_path: Path) -> None:
    """Without a job config: --ledger with --backend local and a running `groqbatch serve`."""
    zip_path = tmp_path / "adapter.zip"
    zip_path.write_bytes(adapter_zip())
    serve = ServeProcess()
    try:
        serve.wait_ready()
        where = ["--backend", "local", "--base-url", serve.url]
        first = [*where, "--ledger", str(tmp_path / "first.sqlite")]
        model = ok("adapters", "upload", str(zip_path), "--name", "shared",
                   "--base-model", "llama-3.1-8b-instant", *first).strip()
        refused = run_cli("adapters", "upload", str(zip_path), "--name", "shared",
                          "--base-model", "llama-3.1-8b-instant", *first)
        assert refused.returncode == 2
        assert "registered already" in refused.stderr
        second = [*where, "--ledger", str(tmp_path / "second.sqlite")]
        listed = run_cli("adapters", "list", *second)
        assert listed.returncode == 0, listed.stderr
        assert model in listed.stdout
        assert "'shared' was on the account, not in the ledger: recorded" in listed.stderr
        ok("adapters", "delete", "shared", *second)
        assert json.loads(ok("adapters", "list", "--json", *first))["gone"] == ["shared"]
        missing = run_cli("adapters", "list", "--ledger", str(tmp_path / "x.sqlite"),
                          "--backend", "local")
        assert missing.returncode == 2
        assert "--backend local needs --base-url" in missing.stderr
    finally:
        serve.stop()


def test_adapters_commands_have_help() -> None:
    for command in ("pack", "validate", "upload", "list", "show", "delete"):
        assert "Usage:" in ok("adapters", command, "--help")


def test_pack_writes_fp16_from_fp32(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = peft_folder(tmp_path, save({A: rng.normal(0, 0.02, (16, 32)).astype(np.float32)}))
    out = json.loads(ok("adapters", "pack", str(folder), "-o", str(tmp_path / "a.zip"), "--json"))
    assert out["converted"] == {"F32": 1}
    assert out["left_out"] == ["README.md", "tokenizer.json"]
