"""What a job *is*: its config, its inputs, its prompts, its requests and its shard files.

    from jobs import load_job, compile_job
    from state import Ledger

    spec = load_job("configs/quickstart.toml")          # ConfigError names file, line, field
    with Ledger.open(spec.ledger_target) as ledger:
        report = compile_job(spec, ledger)               # rows → requests → shard files
    print(report.as_dict())

:func:`plan_job` does the same into a scratch ledger and prices it, spending nothing.
"""

from __future__ import annotations

from jobs.compile import CompileReport, ShardSummary, compile_job
from jobs.inputs import iter_job_rows, read_rows
from jobs.load import job_from_dict, load_job, spec_hash, spec_json
from jobs.plan import PlanReport, Price, load_prices, plan_job, price_for
from jobs.policy import BudgetSpec, FallbackSpec, PolicySpec
from jobs.prompt import JsonObjectFormat, JsonSchemaFormat, PromptSpec, TextFormat
from jobs.requests import CHAT_ENDPOINT, BuiltRequest, RequestBuilder, batch_line, custom_id_for
from jobs.shards import ShardWriter, WrittenShard
from jobs.spec import InputSpec, JobSpec, OutputSpec
from jobs.template import PromptTemplates, RowRejected

__all__ = [
    "CHAT_ENDPOINT",
    "BudgetSpec",
    "BuiltRequest",
    "CompileReport",
    "FallbackSpec",
    "InputSpec",
    "JobSpec",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "OutputSpec",
    "PlanReport",
    "PolicySpec",
    "Price",
    "PromptSpec",
    "PromptTemplates",
    "RequestBuilder",
    "RowRejected",
    "ShardSummary",
    "ShardWriter",
    "TextFormat",
    "WrittenShard",
    "batch_line",
    "compile_job",
    "custom_id_for",
    "iter_job_rows",
    "job_from_dict",
    "load_job",
    "load_prices",
    "plan_job",
    "price_for",
    "read_rows",
    "spec_hash",
    "spec_json",
]
