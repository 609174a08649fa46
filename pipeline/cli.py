"""The ``groqbatch`` command line. Each command parses, calls one library function, prints.

Errors of the groqbatch tree are mapped to exit codes in one place (:class:`_Group`):
2 config/input, 3 ledger, 4 budget, 1 anything else of ours.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from . import __version__
from .errors import GroqBatchError, exit_code_for, redact

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns our errors into one clean line on stderr and the tree's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GroqBatchError as exc:
            notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))
            click.echo(f"error: {exc}{redact(notes)}", err=True)
            sys.exit(exit_code_for(exc))


def json_option(func: F) -> F:
    """``--json``: print one JSON object instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(func)


def echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="groqbatch")
def main() -> None:
    """Run LLM work in bulk through the Groq Batch API."""


def _parse_rate_limit(text: str) -> tuple[str, dict[str, int]]:
    """``MODEL[@TIER]=rpm:30,tpm:6000,rpd:1000,tpd:500000`` → key and RateLimit fields."""
    key, sep, spec = text.partition("=")
    names = {"rpm": "requests_per_minute", "rpd": "requests_per_day", "tpm": "tokens_per_minute",
             "tpd": "tokens_per_day"}
    fields: dict[str, int] = {}
    for part in spec.split(","):
        name, _, value = part.partition(":")
        if not sep or name.strip() not in names or not value.strip().isdigit():
            raise click.BadParameter(
                f"{text!r}: expected MODEL[@TIER]=rpm:N,rpd:N,tpm:N,tpd:N", param_hint="--rate-limit"
            )
        fields[names[name.strip()]] = int(value)
    return key.strip(), fields


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port to listen on.")
@click.option("--api-key", envvar="GROQ_API_KEY", default=None,
              help="Bearer key clients must send [env GROQ_API_KEY; default: the local key].")
@click.option("--time-scale", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Emulated seconds per real second (86400: a 24h window passes in 1 s).")
@click.option("--throughput", "throughput_lines_per_s", default=100.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="Batch lines per emulated second.")
@click.option("--scenario", "scenario_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Fault scenario file (TOML, YAML or JSON).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the server's state here and carry on from it when started again "
                   "(default: a temporary directory).")
@click.option("--max-file-lines", default=50_000, show_default=True, type=click.IntRange(min=1),
              help="Lines a batch file may hold; more is refused with 400 too_many_lines.")
@click.option("--max-file-bytes", default=100 * 1024 * 1024, show_default=True, type=click.IntRange(min=1),
              help="Bytes a batch file may hold; more is refused with 413 file_too_large.")
@click.option("--rate-limit", "rate_limits", multiple=True, metavar="MODEL[@TIER]=rpm:N,rpd:N,tpm:N,tpd:N",
              help="Limit a model (on one tier); repeatable.")
@click.option("--rate-limit-plan", type=click.Choice(["unlimited", "free"]), default="unlimited",
              show_default=True,
              help="Limits of models without --rate-limit: none, or Groq's published free-plan "
                   "table (flex tier: 10x).")
@click.option("--chat-latency", "chat_latency_s", default=0.0, show_default=True,
              type=click.FloatRange(min=0), help="Real seconds each chat completion takes.")
@click.option("--selftest", is_flag=True,
              help="Start in-process, drive one batch and one chat call over real HTTP, report, exit.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="The server's log level; every request is logged at debug.")
def serve(host: str, port: int, api_key: str | None, time_scale: float, throughput_lines_per_s: float,
          scenario_path: Path | None, data_dir: Path | None, max_file_lines: int, max_file_bytes: int,
          rate_limits: tuple[str, ...], rate_limit_plan: str, chat_latency_s: float, selftest: bool,
          log_level: str) -> None:
    """Run the local Groq-compatible server (files, batches, chat, models, LoRA)."""
    from .emulator import EmulatorConfig, RateLimit, load_scenario
    from .emulator.config import DEFAULT_API_KEY

    settings: dict[str, Any] = {
        "api_key": api_key or DEFAULT_API_KEY,
        "time_scale": time_scale,
        "throughput_lines_per_s": throughput_lines_per_s,
        "max_file_lines": max_file_lines,
        "max_file_bytes": max_file_bytes,
        "chat_latency_s": chat_latency_s,
        "rate_limits": {
            key: RateLimit(**fields) for key, fields in map(_parse_rate_limit, rate_limits)
        },
        "rate_limit_plan": rate_limit_plan,
        "data_dir": data_dir,
    }
    if scenario_path is not None:
        try:
            settings["scenario"] = load_scenario(scenario_path)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--scenario") from None
    if selftest:
        from .emulator.selftest import run_selftest

        # A 24h window on a clock 3600x fast: the selftest batch still settles in about a second.
        settings["time_scale"] = max(time_scale, 3600.0)
        report = run_selftest(EmulatorConfig(**settings), say=click.echo)
        sys.exit(0 if report.ok else 1)
    from .emulator.serve import serve_forever

    key_note = "the default local key" if api_key is None else "the key from --api-key/GROQ_API_KEY"
    click.echo(
        f"groqbatch local server on http://{host}:{port} "
        f"(groq SDK base_url; openai SDK: http://{host}:{port}/openai/v1), clients send {key_note}",
        err=True,
    )
    serve_forever(EmulatorConfig(**settings), host=host, port=port, log_level=log_level)



def config_argument(func: F) -> F:
    return click.argument("config", type=click.Path(dir_okay=False, path_type=Path))(func)


def ledger_option(func: F) -> F:
    """``--ledger URL`` (or ``GROQBATCH_LEDGER``), over the config's ``ledger``: workers on
    several machines point at one PostgreSQL ledger without editing the config."""
    return click.option(
        "--ledger", "ledger_url", envvar="GROQBATCH_LEDGER", default=None, metavar="URL",
        help="The ledger: a path or SQLAlchemy URL, e.g. postgresql+psycopg://host/db "
             "[env GROQBATCH_LEDGER; default: the config's ledger].",
    )(func)


def load_spec(config: Path, ledger_url: str | None) -> Any:
    """Load a job config, with the ledger from ``--ledger``/``GROQBATCH_LEDGER`` if given."""
    from jobs import load_job
    from jobs.load import with_ledger

    return with_ledger(load_job(config), ledger_url)


@main.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def validate(configs: tuple[Path, ...], as_json: bool) -> None:
    """Check job configs and their inputs (every row rendered); spends nothing.

    Exit 0 when every config is valid, 2 with the file, line and field of the first problem.
    """
    import anyio

    from jobs import load_job
    from jobs.check import check_job

    from .planning import resolve_job_model
    from .preflight import check_model, require_input, require_requests

    reports = []
    for path in configs:
        spec = load_job(path)
        model = resolve_job_model(spec, config=path)  # an unknown adapter fails here
        require_input(spec, path)
        warnings = anyio.run(check_model, spec, model, path)
        checked = check_job(spec, config_path=str(path), model=model)
        first = checked.first_rejections[0] if checked.first_rejections else None
        require_requests(spec, path, rows=checked.rows, ok=checked.ok, rejected=checked.rejected,
                         example=None if first is None else
                         f"row {first['row_key']} (line {first['line']}): {first['reason']}")
        reports.append(checked.as_dict() | {"warnings": warnings})
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
    if as_json:
        echo_json(reports if len(reports) > 1 else reports[0])
        return
    for report in reports:
        click.echo(f"{report['config']}: job {report['job']!r} is valid — {report['rows']} rows, "
                   f"{report['ok']} become requests, {report['rejected']} rejected"
                   + (f", {report['duplicate_rows']} left out as duplicate ids"
                      if report.get("duplicate_rows") else ""))
        for rejection in report["first_rejections"]:
            click.echo(f"  rejected row {rejection['row_key']} (line {rejection['line']}): "
                       f"{rejection['reason']}")


@main.command()
@config_argument
@click.option("--refresh", is_flag=True, help="Count answered requests as to send again.")
@ledger_option
@json_option
def plan(config: Path, refresh: bool, ledger_url: str | None, as_json: bool) -> None:
    """A dry run: rows, requests, cache hits, rejections, shards, tokens and cost. Spends nothing."""
    from .planning import plan_config
    from .render import print_plan

    report = plan_config(load_spec(config, ledger_url) if ledger_url else config, refresh=refresh,
                         config_path=config)
    if as_json:
        echo_json(report.as_dict())
    else:
        print_plan(report)


def quiet_option(func: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress output.")(func)


@main.command()
@config_argument
@click.option("--no-wait", is_flag=True,
              help="Advance everything that can move now, then exit (for cron); run again to resume.")
@click.option("--refresh", is_flag=True, help="Send requests again even if answered before.")
@click.option("--run-name", help="A name for this run, kept in the ledger (e.g. nightly-2026-11-22).")
@ledger_option
@click.option("--worker-id", default=None,
              help="This worker's name in claims, logs and status [default: host:pid].")
@click.option("--lease", "lease_s", default=None, type=click.FloatRange(min=1),
              envvar="GROQBATCH_LEASE_S",
              help="Seconds a claim holds unless renewed; a stopped worker's work is taken over "
                   "after it [env GROQBATCH_LEASE_S; default: 60].")
@click.option("--max-failed", "max_failed", default="0", show_default=True, metavar="N|P%",
              help="Requests that may end failed or unsent (a count, or a percent of the job's "
                   "requests) before the run exits 4, \"finished with failures\".")
@quiet_option
@json_option
def run(config: Path, no_wait: bool, refresh: bool, run_name: str | None, ledger_url: str | None,
        worker_id: str | None, lease_s: float | None, max_failed: str, quiet: bool,
        as_json: bool) -> None:
    """Run a job: compile, submit, poll, reconcile — resuming whatever an earlier run left.

    Safe to start any number of times at once, on any machines sharing the ledger: each run is
    a worker that claims its share of the work, and none sends anything twice. Exits 4 when
    more requests end failed or unsent than --max-failed allows (see docs: exit codes).
    """
    import anyio

    from .failures import MaxFailed, check_failures
    from .render import ProgressDisplay, print_run_summary
    from .runner import run_job
    from .workers import Worker

    try:
        tolerance = MaxFailed.parse(max_failed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-failed") from None
    spec = load_spec(config, ledger_url)
    worker = Worker.make(worker_id, lease_s)
    display = ProgressDisplay(quiet=quiet or as_json)
    try:
        summary = anyio.run(lambda: run_job(spec, wait=not no_wait, refresh=refresh, run_name=run_name,
                                            config_path=config,
                                            on_progress=None if display.quiet else display,
                                            worker=worker))
    finally:
        display.close()
    if as_json:
        echo_json(summary.as_dict())
    else:
        print_run_summary(summary, config=str(config))
    check_failures(summary, tolerance)


@main.command()
@config_argument
@ledger_option
@json_option
def status(config: Path, ledger_url: str | None, as_json: bool) -> None:
    """Per-run and per-shard state, counts, tokens, cost and live workers, from the ledger alone."""
    from .render import print_status
    from .status import job_status

    report = job_status(load_spec(config, ledger_url))
    if as_json:
        echo_json(report)
    else:
        print_status(report)


@main.command()
@config_argument
@click.option("--no-wait", is_flag=True, help="Send the cancels and exit; a later run reconciles.")
@ledger_option
@json_option
def cancel(config: Path, no_wait: bool, ledger_url: str | None, as_json: bool) -> None:
    """Cancel the job's in-flight batches and reconcile what they finished."""
    from dataclasses import asdict

    import anyio

    from .cancel import cancel_job

    spec = load_spec(config, ledger_url)
    report = anyio.run(lambda: cancel_job(spec, wait=not no_wait))
    if as_json:
        echo_json(asdict(report))
    else:
        click.echo(f"cancelled {report.cancelled} batches ({report.already_settled} had settled); "
                   f"reconciled {report.reconciled_shards} shards: {report.succeeded} answers kept, "
                   f"{report.retryable} requests left undone"
                   + (f"; {report.still_cancelling} still cancelling" if report.still_cancelling else ""))


@main.command()
@config_argument
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML page (a chart per scorer) to this file.")
@click.option("--last", type=click.IntRange(min=1), default=None,
              help="Only the last N scored runs.")
@ledger_option
@json_option
def report(config: Path, html_path: Path | None, last: int | None, ledger_url: str | None,
           as_json: bool) -> None:
    """An evaluation job's metrics per run and their trend, from the ledger alone."""
    from .render import print_report
    from .report import evaluation_report, render_html, write_html

    result = evaluation_report(load_spec(config, ledger_url), last=last)
    if html_path is not None:
        write_html(html_path, render_html(result))
    if as_json:
        echo_json(result)
        return
    print_report(result)
    if html_path is not None:
        click.echo(f"wrote {html_path}", err=True)


@main.command()
@config_argument
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of [output].path.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]),
              help="Default: from the path's suffix. Parquet needs `pip install 'groqbatch[parquet]'`.")
@click.option("--only-succeeded", is_flag=True, help="Leave out failed, rejected and open rows.")
@click.option("--since-last", is_flag=True,
              help="Only rows answered since the job's last export.")
@click.option("--step", "step", default=None, metavar="NAME",
              help="A job with [[steps]]: the step to export [default: the last].")
@ledger_option
@json_option
def export(config: Path, output: Path | None, fmt: str | None, only_succeeded: bool,
           since_last: bool, step: str | None, ledger_url: str | None, as_json: bool) -> None:
    """Write results joined to the input rows (every column, answer, parsed fields, status,
    error, tokens, tier) as JSONL, CSV or Parquet, atomically."""
    from .export import export_config

    result = export_config(load_spec(config, ledger_url), path=output, format=fmt,
                           only_succeeded=only_succeeded, since_last=since_last, step=step)
    if as_json:
        echo_json(result.as_dict())
        return
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.statuses.items()))
    left_out = f"; {result.left_out} left out" if result.left_out else ""
    since = f" (answered since {result.since})" if result.since else ""
    click.echo(f"exported {result.rows} rows of job {result.job!r}{since} to {result.path} "
               f"({result.format}){': ' + counts if counts else ''}{left_out}")


# -- LoRA adapters -------------------------------------------------------------------------------


@main.group()
def adapters() -> None:
    """LoRA adapters: pack a fine-tuning folder, validate, upload and register, list, delete.

    Jobs use one with `adapter = "NAME"` in their config, resolved from their ledger.
    `upload`, `list`, `show` and `delete` act on an account and record in a ledger: give
    `--config CONFIG` (that job's backend and ledger) or `--ledger PATH` with `--backend`.
    """


def base_model_option(func: F) -> F:
    return click.option("--base-model", help="The Groq base model the adapter is for "
                        "(default: the one adapter_config.json names).")(func)


def adapter_home_options(func: F) -> F:
    """``--config`` or ``--ledger``/``--backend``/``--base-url``: where adapters are recorded."""
    options = [
        click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
                     help="A job config: use its backend, base_url and ledger (with backend "
                          "\"local\", its in-process server's data_dir)."),
        click.option("--ledger", "ledger", help="A ledger path or SQLAlchemy URL (instead of "
                     "--config)."),
        click.option("--backend", type=click.Choice(["groq", "local"]), default=None,
                     help="With --ledger: groq (default; $GROQ_API_KEY) or local (a running "
                          "`groqbatch serve` at --base-url)."),
        click.option("--base-url", envvar="GROQ_BASE_URL", default=None,
                     help="With --ledger: the API's base URL [env GROQ_BASE_URL]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _adapter_home(config: Path | None, ledger: str | None, backend: str | None,
                  base_url: str | None) -> Any:
    from .adapters import AdapterHome

    if config is not None:
        typed_url = (click.get_current_context().get_parameter_source("base_url")
                     is click.core.ParameterSource.COMMANDLINE)
        if ledger is not None or backend is not None or typed_url:
            raise click.UsageError("give --config, or --ledger with --backend [--base-url], "
                                   "not both")
        return AdapterHome.from_config(config)
    if ledger is None:
        raise click.UsageError("where is the adapter recorded? give --config CONFIG "
                               "(a job's backend and ledger) or --ledger PATH --backend groq|local")
    return AdapterHome.standalone(ledger, "local" if backend == "local" else "groq", base_url)


def _run_on_home(home: Any, operation: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    import anyio

    async def go() -> Any:
        async with home.open() as (ledger, client):
            return await operation(ledger, client, *args, **kw)

    return anyio.run(go)


@adapters.command("pack")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("adapter.zip"), show_default=True, help="The zip to write.")
@base_model_option
@json_option
def adapters_pack(folder: Path, output: Path, base_model: str | None, as_json: bool) -> None:
    """Build Groq's adapter zip from a PEFT-style folder (float16 weights + config).

    BF16/F32 tensors are converted to float16 (and said so); what cannot be made right —
    a `.bin` pickle, rank not 8/16/32/64, no lora_alpha, values beyond float16 — is refused.
    Needs `pip install 'groqbatch[lora]'`.
    """
    from .adapter_pack import pack_adapter

    report = pack_adapter(folder, output, base_model=base_model)
    if as_json:
        echo_json(report.as_dict())
        return
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if report.left_out:
        click.echo(f"note: left out {', '.join(report.left_out)}", err=True)
    click.echo(f"{report.output}: {report.tensors} float16 tensors, r={report.rank}, "
               f"lora_alpha={report.alpha:g}, base model {report.base_model or 'not named'} "
               f"({report.bytes:,} bytes)")


@adapters.command("validate")
@click.argument("zip_path", metavar="ZIP", type=click.Path(dir_okay=False, path_type=Path))
@base_model_option
@json_option
def adapters_validate(zip_path: Path, base_model: str | None, as_json: bool) -> None:
    """Check an adapter zip as Groq does, reading headers only. Exit 2 naming each problem."""
    from .adapter_zip import check_adapter_zip

    info = check_adapter_zip(zip_path, base_model=base_model)
    if as_json:
        echo_json(info.as_dict())
        return
    base = info.base_model or base_model
    click.echo(f"{zip_path}: a valid Groq LoRA adapter — {info.tensors} float16 tensors "
               f"({info.weights_bytes:,} bytes), r={info.rank}, lora_alpha={info.alpha:g}, "
               f"base model {base or 'not named'}")


@adapters.command("upload")
@click.argument("zip_path", metavar="ZIP", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="The adapter's name; jobs say adapter = \"NAME\".")
@base_model_option
@adapter_home_options
@json_option
def adapters_upload(zip_path: Path, name: str, base_model: str | None, config: Path | None,
                    ledger: str | None, backend: str | None, base_url: str | None,
                    as_json: bool) -> None:
    """Validate, upload (purpose fine_tuning), register, and record the ft: model id as NAME."""
    from .adapters import upload_adapter

    home = _adapter_home(config, ledger, backend, base_url)
    report = _run_on_home(home, upload_adapter, zip_path, name=name, base_model=base_model)
    if as_json:
        echo_json(report.as_dict())
        return
    how = "adopted (an earlier upload had registered it)" if report.adopted else "registered"
    click.echo(f"adapter {name!r} {how} on {home.describe()}; recorded in {home.ledger_target}",
               err=True)
    click.echo(report.record.model_id)


@adapters.command("list")
@adapter_home_options
@json_option
def adapters_list(config: Path | None, ledger: str | None, backend: str | None,
                  base_url: str | None, as_json: bool) -> None:
    """The account's adapters, with the ledger brought in step (adopting, marking deleted)."""
    from .adapters import sync_adapters

    listing = _run_on_home(_adapter_home(config, ledger, backend, base_url), sync_adapters)
    if as_json:
        echo_json(listing.as_dict())
        return
    for record in listing.adapters:
        click.echo(f"{record.name}\t{record.model_id or '(upload not finished)'}\t"
                   f"{record.base_model}\t{record.fine_tuning_id or '-'}")
    if not listing.adapters:
        click.echo("no adapters", err=True)
    for name in listing.adopted:
        click.echo(f"note: {name!r} was on the account, not in the ledger: recorded", err=True)
    for name in listing.gone:
        click.echo(f"note: {name!r} is no longer on the account: marked deleted", err=True)


@adapters.command("show")
@click.argument("name")
@adapter_home_options
@json_option
def adapters_show(name: str, config: Path | None, ledger: str | None, backend: str | None,
                  base_url: str | None, as_json: bool) -> None:
    """One adapter: its ft: model id, base model, fine tuning and file, as the account has it."""
    from .adapters import show_adapter

    details = _run_on_home(_adapter_home(config, ledger, backend, base_url), show_adapter, name)
    if as_json:
        echo_json(details)
        return
    for key in ("name", "model_id", "base_model", "fine_tuning_id", "file_id", "created_at"):
        click.echo(f"{key}: {details.get(key)}")


@adapters.command("delete")
@click.argument("name")
@adapter_home_options
@json_option
def adapters_delete(name: str, config: Path | None, ledger: str | None, backend: str | None,
                    base_url: str | None, as_json: bool) -> None:
    """Delete the adapter from the account and mark it deleted; jobs naming it stop validating."""
    from .adapters import delete_adapter

    report = _run_on_home(_adapter_home(config, ledger, backend, base_url), delete_adapter, name)
    if as_json:
        echo_json(report.as_dict())
        return
    gone = " (it was gone from the account already)" if report.already_gone else ""
    click.echo(f"adapter {name!r} deleted{gone}: {report.model_id or 'no ft: model'}")


# -- init, retry, inspect, jobs, gc (pipeline/commands.py registers them on `main`) --------------

from . import commands as _commands  # noqa: E402, F401  (they use the options defined above)
