"""The ``init``, ``retry``, ``inspect``, ``jobs`` and ``gc`` commands.

Each parses, calls one library function, prints — a table or a few lines for people, one JSON
object with ``--json``. They register themselves on :data:`pipeline.cli.main` and reuse its
shared options (``--ledger``, ``--json``, ``--quiet``, and ``run``'s own for ``retry``), so
they behave as the other commands do; errors reach the same one-line message and exit code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from .cli import (
    config_argument,
    echo_json,
    json_option,
    ledger_option,
    load_spec,
    main,
    quiet_option,
    run,
)
from .errors import ConfigError

__all__ = ["gc", "init", "inspect", "jobs", "retry"]


def run_options(*names: str) -> Callable[[click.Command], click.Command]:
    """``run``'s options ``names``, shared as they are (same flags, help and env vars), so a
    command that runs the job takes them exactly as ``run`` does."""

    def decorate(command: click.Command) -> click.Command:
        by_name = {param.name: param for param in run.params}
        command.params.extend(by_name[name] for name in names)
        return command

    return decorate


def _when(stamp: float | None, form: str = "%Y-%m-%d %H:%M UTC") -> str:
    if stamp is None:
        return "-"
    return dt.datetime.fromtimestamp(stamp, tz=dt.UTC).strftime(form)


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count:,} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count:,} bytes"  # pragma: no cover


# -- init ---------------------------------------------------------------------------------------


@main.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="The job's name [default: from the folder's name].")
@click.option("--force", is_flag=True, help="Overwrite job.toml and data/sample.jsonl if they exist.")
@json_option
def init(directory: Path, name: str | None, force: bool, as_json: bool) -> None:
    """Write a commented job config (DIR/job.toml) and a five-row sample input that run as they
    are on the local server: `groqbatch run DIR/job.toml`. Refuses to overwrite (exit 2)."""
    from .scaffold import init_job

    report = init_job(directory, force=force, name=name)
    if as_json:
        echo_json(report.as_dict())
        return
    how = "overwrote" if report.overwritten else "wrote"
    click.echo(f"{how} {report.config} and {report.input} (job {report.job!r}); next:")
    for command in report.next:
        click.echo(f"  {command}")


# -- retry --------------------------------------------------------------------------------------


@run_options("no_wait", "run_name", "worker_id", "lease_s", "max_failed")
@main.command("retry")
@config_argument
@click.option("--failed", "failed", is_flag=True,
              help="Requests that failed with an error (a 4xx, or their attempts spent).")
@click.option("--invalid-output", is_flag=True,
              help="Requests whose answer did not parse or fit the output schema.")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help="Only rows whose column KEY is VALUE (an input column, groqbatch_row_key, "
                   "groqbatch_custom_id, or groqbatch_error: errors containing VALUE); "
                   "repeatable: one key twice is 'any of'.")
@click.option("--mark-only", is_flag=True,
              help="Mark them and exit; the next `groqbatch run` (of any worker) sends them.")
@click.option("--dry-run", is_flag=True, help="Count what would be marked; change nothing.")
@ledger_option
@quiet_option
@json_option
def retry(config: Path, failed: bool, invalid_output: bool, where: tuple[str, ...],
          mark_only: bool, dry_run: bool, ledger_url: str | None, quiet: bool, as_json: bool,
          no_wait: bool, run_name: str | None, worker_id: str | None,
          lease_s: float | None, max_failed: str) -> None:
    """Send failed requests again: mark them (failed → pending, their error kept in the
    ledger's history), then run the job as `run` does. Without --failed or --invalid-output,
    both. Succeeded and open requests are never sent again; safe while other workers run.
    Exits 4, as `run` does, when more requests end failed or unsent than --max-failed allows."""
    import anyio

    from .failures import MaxFailed, check_failures
    from .render import ProgressDisplay
    from .resend import parse_where, retry_job
    from .workers import Worker

    try:
        tolerance = MaxFailed.parse(max_failed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-failed") from None
    spec = load_spec(config, ledger_url)
    both = not (failed or invalid_output)
    selection = parse_where(where)
    display = ProgressDisplay(quiet=quiet or as_json or mark_only or dry_run)
    try:
        report = anyio.run(lambda: retry_job(
            spec, failed=failed or both, invalid_output=invalid_output or both,
            where=selection, run=not mark_only, dry_run=dry_run, wait=not no_wait,
            run_name=run_name, config_path=config, on_progress=display,
            worker=Worker.make(worker_id, lease_s)))
    finally:
        display.close()
    if as_json:
        echo_json(report.as_dict())
    else:
        _print_retry(report, dry_run, config)
    if report.summary is not None:
        check_failures(report.summary, tolerance)


def _print_retry(report: Any, dry_run: bool, config: Path) -> None:
    from .render import print_run_summary

    marked = report.marked
    kinds = f"{marked['failed']} failed, {marked['invalid_output']} invalid output"
    verb = "would mark" if dry_run else "marked"
    click.echo(f"{verb} {marked['total']} requests of job {report.job!r} to send again ({kinds})",
               err=report.summary is not None)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if report.summary is not None:
        print_run_summary(report.summary, config=str(config))


# -- inspect ------------------------------------------------------------------------------------


@main.command("inspect")
@config_argument
@click.argument("key", metavar="ROW_KEY|CUSTOM_ID")
@ledger_option
@json_option
def inspect(config: Path, key: str, ledger_url: str | None, as_json: bool) -> None:
    """One row's journey: its input row, request body and custom_id, shard and batch, every
    recorded attempt (batch and flex), result, error and cost. From the ledger alone; an
    unknown key exits 2."""
    from .journey import inspect_row

    journey = inspect_row(load_spec(config, ledger_url), key)
    if as_json:
        echo_json(journey)
        return
    _print_journey(journey)


def _print_journey(j: dict[str, Any]) -> None:
    echo = click.echo
    rows = j["rows"]
    shared = f" (shared by {len(rows)} rows)" if len(rows) > 1 else ""
    row = rows[0] if rows else None
    echo(f"job {j['job']!r} · row {j['row_key'] or '-'}"
         + (f" (input row {row['row_index']})" if row else "") + f"{shared}")
    if j["input_row"] is not None:
        echo(f"  input: {_short(j['input_row'])}")
    elif j["input_note"]:
        echo(f"  input: {j['input_note']}")
    request = j["request"]
    if request is None:
        echo(f"  rejected: {j['error'] or 'no request'}")
        return
    echo(f"request {j['custom_id']} · {request['status']} · tier {request['tier'] or '-'} · "
         f"{request['attempts']} attempts")
    echo(f"  body: {_short(request['body'])}")
    shard, batch = j["shard"], j["batch"]
    if shard is not None:
        echo(f"  shard {shard['key']} ({shard['lines']} lines, {shard['step']})"
             + (f" · batch {batch['id']} {batch['status']}" if batch and batch["id"] else ""))
    echo("attempts:" if j["attempts"] else "attempts: none recorded")
    for number, attempt in enumerate(j["attempts"], start=1):
        via = attempt["source"] + (f" {attempt['batch_id']}" if attempt["batch_id"] else "")
        if attempt["outcome"] == "in_progress":
            echo(f"  {number}. {via}: in progress")
            continue
        code = attempt["status_code"] if attempt["status_code"] is not None else "-"
        replaced = " (replaced)" if attempt["replaced_at"] else ""
        echo(f"  {number}. {via}: {attempt['outcome']} {code} at {_when(attempt['received_at'])}"
             f" (run {attempt['run_id'] or '-'}){replaced}")
    result = j["result"]
    if result is not None:
        answer = (result["body"] or {}).get("choices", [{}])[0].get("message", {}).get("content") \
            if isinstance(result["body"], dict) and result["body"].get("choices") else None
        echo(f"result: {result['status_code']} from {result['source']}"
             + (f" · answer: {_short(answer, 120)}" if answer is not None else ""))
    echo(f"error: {_short(j['error'], 200) if j['error'] else '-'}")
    cost = j["cost"]
    echo(f"cost: {cost['prompt_tokens']} prompt + {cost['completion_tokens']} completion tokens"
         f" · ${cost['cost_usd']:.6f}")


# -- jobs ---------------------------------------------------------------------------------------


@main.command("jobs")
@ledger_option
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="Use this job config's ledger (instead of --ledger).")
@json_option
def jobs(ledger_url: str | None, config: Path | None, as_json: bool) -> None:
    """The jobs a ledger holds: state (running, unfinished, finished, empty), requests done,
    failed and open, spend, runs. From the ledger alone."""
    from .catalog import list_jobs

    if ledger_url is not None:
        target = ledger_url
    elif config is not None:
        target = load_spec(config, None).ledger_target
    else:
        raise ConfigError("which ledger? give --ledger URL (or GROQBATCH_LEDGER), or --config "
                          "CONFIG for a job's own ledger")
    listed = list_jobs(target)
    if as_json:
        echo_json({"ledger": str(target), "jobs": listed})
        return
    if not listed:
        click.echo(f"no jobs in {target}")
        return
    width = max(4, *(len(job["name"]) for job in listed))
    click.echo(f"{'job':<{width}}  {'state':<10}  {'done':>8}  {'failed':>6}  {'open':>5}  "
               f"{'cost':>9}  {'runs':>4}  last run (UTC)")
    for job in listed:
        requests = job["requests"]
        total = sum(requests.values())
        done = f"{requests['succeeded']}/{total}"
        left = total - requests["succeeded"] - requests["failed"]
        click.echo(f"{job['name']:<{width}}  {job['state']:<10}  {done:>8}  "
                   f"{requests['failed']:>6}  {left:>5}  {_dollars(job['spend']['cost_usd']):>9}  "
                   f"{job['runs']:>4}  {_when(job['last_started_at'], '%m-%d %H:%M')}")


def _dollars(amount: float) -> str:
    return f"${amount:.6f}" if amount < 1 else f"${amount:,.2f}"


# -- gc -----------------------------------------------------------------------------------------


@main.command("gc")
@config_argument
@click.option("--remote", is_flag=True, help="Delete the job's finished batch files on the server.")
@click.option("--local", is_flag=True,
              help="Delete the job's finished shard and download files in its workdir.")
@click.option("--older-than", "older_than", metavar="DURATION",
              help="Only shards finished at least this long ago: 30m, 12h, 7d, 2w.")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@ledger_option
@json_option
def gc(config: Path, remote: bool, local: bool, older_than: str | None, dry_run: bool,
       ledger_url: str | None, as_json: bool) -> None:
    """Delete files the job no longer needs: its remote batch input, output and error files
    and its local shard and download files (without --remote or --local, both) — never one a
    live batch, a live claim or an unsettled request still uses — and report what was freed."""
    import anyio

    from jobs.policy import parse_duration

    from .cleanup import gc_job

    older_than_s = None
    if older_than is not None:
        try:
            older_than_s = parse_duration(older_than).total_seconds()
        except ValueError as exc:
            raise ConfigError(f"--older-than: {exc}") from None
    both = not (remote or local)
    spec = load_spec(config, ledger_url)
    report = anyio.run(lambda: gc_job(spec, remote=remote or both, local=local or both,
                                      older_than_s=older_than_s, dry_run=dry_run))
    if as_json:
        echo_json(report.as_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    parts = []
    if report.remote:
        parts.append(f"{report.remote_freed['files']} remote files "
                     f"({_bytes(report.remote_freed['bytes'])})")
    if report.local:
        parts.append(f"{report.local_freed['files']} local files "
                     f"({_bytes(report.local_freed['bytes'])})")
    click.echo(f"{verb} {' and '.join(parts)} of job {report.job!r}")
    kept = []
    if report.kept["shards_not_done"]:
        kept.append(f"{report.kept['shards_not_done']} shards still in use (batch not finished, "
                    "claimed by a worker, or requests open)")
    if report.kept["shards_too_recent"]:
        kept.append(f"{report.kept['shards_too_recent']} shards finished less than {older_than} ago")
    if kept:
        click.echo(f"kept the files of {' and '.join(kept)}")
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
