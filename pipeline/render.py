"""Human-readable output of the CLI (rich tables); ``--json`` bypasses all of this."""

from __future__ import annotations

import os
from typing import Any

import orjson
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jobs import PlanReport

from .progress import ProgressDisplay
from .runner import RunSummary

__all__ = ["ProgressDisplay", "print_plan", "print_report", "print_run_summary", "print_status"]


def _console() -> Console:
    """stdout, as wide as the terminal — or ``$COLUMNS`` when set (rich reads it), else 120
    columns for logs and pipes."""
    # No markup: configs, notes and errors hold [table] names that are text, not styles.
    console = Console(highlight=False, soft_wrap=True, markup=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(highlight=False, soft_wrap=True, markup=False, width=120)
    return console


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def print_plan(plan: PlanReport) -> None:
    report = plan.compile
    console = _console()
    table = Table(title=f"plan for job {report.job!r} on {report.model}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("input rows", f"{report.rows:,}")
    table.add_row("rows that become requests", f"{report.ok:,}")
    table.add_row("rows rejected", f"{report.rejected:,}")
    table.add_row("rows new / changed / unchanged",
                  f"{report.new_rows:,} / {report.changed_rows:,} / {report.unchanged_rows:,}")
    table.add_row("unique requests", f"{report.unique_requests:,}")
    table.add_row("already answered (cached)", f"{report.already_answered:,}")
    table.add_row("to send", f"{report.to_send:,}")
    sizes = ", ".join(f"{s.lines:,} lines / {human_bytes(s.bytes)}"
                      + ("" if s.fits else " (over budget)") for s in report.shards[:5])
    more = f" (+{len(report.shards) - 5} more)" if len(report.shards) > 5 else ""
    table.add_row("shards", f"{len(report.shards)}" + (f": {sizes}{more}" if sizes else ""))
    if plan.budget_fits is not None:
        fit = [s for s in report.shards if s.fits]
        table.add_row("within [policy.budget]",
                      f"{len(fit)} of {len(report.shards)} shards, {plan.budget_fits:,} requests")
        if plan.budget_held:
            table.add_row(f"held back by {plan.budget_reached}", f"{plan.budget_held:,} requests")
    at_most = report.to_send * plan.max_completion_tokens
    table.add_row("prompt tokens (estimated)", f"{report.est_prompt_tokens:,}")
    table.add_row("completion tokens, at most",
                  f"{at_most:,} ({plan.max_completion_tokens:,} an answer)")
    table.add_row("tokens expected", f"{plan.expected_prompt_tokens:,} + "
                  f"{plan.expected_completion_tokens:,} (from {plan.expected_from})")
    if plan.cost_batch_usd is not None:
        table.add_row("cost at most (batch, 50% off)", f"${plan.cost_batch_usd:,.4f}")
        table.add_row("cost expected (batch)", f"${plan.cost_expected_usd or 0:,.4f}")
        table.add_row("at most, on demand", f"${plan.cost_on_demand_usd or 0:,.4f}")
    console.print(table)
    if plan.steps:
        steps = Table(title="steps (later steps: from the answers in the ledger now)")
        for column in ("step", "model", "rows", "become requests", "answered", "to send",
                       "waiting upstream", "est. cost (batch)", "window"):
            steps.add_column(column, justify="left" if column in ("step", "model") else "right")
        for step in plan.steps:
            cost = step["cost_batch_usd"]
            steps.add_row(step["name"], step["model"], f"{step['rows']:,}", f"{step['kept']:,}",
                          f"{step['already_answered']:,}", f"{step['to_send']:,}",
                          f"{step['waiting']:,}", "—" if cost is None else f"${cost:,.4f}",
                          step["completion_window"] or "—")
        console.print(steps)
    for rejection in plan.rejections:
        console.print(f"rejected row {rejection['row_key']} (#{rejection['row_index']}): {rejection['reason']}")
    if plan.completion_window is not None:
        console.print(f"completion window: {plan.completion_window} ({plan.window_reason})")
    for warning in plan.warnings:
        console.print(Text("warning:", style="yellow"), warning)


def print_run_summary(summary: RunSummary, *, config: str = "CONFIG") -> None:
    console = _console()
    c = summary.compile
    r = summary.requests
    t = summary.totals
    console.print(f"job {summary.job!r} (run {summary.run_id}) on {summary.model} via {summary.backend}")
    console.print(f"  rows: {summary.rows.get('ok', 0) + summary.rows.get('rejected', 0):,} "
                  f"({summary.rows.get('ok', 0):,} ok, {summary.rows.get('rejected', 0):,} rejected"
                  + (f", {c['duplicate_rows']:,} left out as duplicate ids"
                     if c.get("duplicate_rows") else "") + ") → "
                  f"{c['unique_requests']:,} unique requests ({c['already_answered']:,} answered before)")
    console.print(f"  requests: {r.get('succeeded', 0):,} succeeded, {r.get('failed', 0):,} failed, "
                  f"{r.get('retryable', 0):,} left by their batches, "
                  f"{sum(v for k, v in r.items() if k not in ('succeeded', 'failed', 'retryable')) - summary.budget_held:,} in flight"
                  + (f", {summary.budget_held:,} held back by the budget" if summary.budget_held else ""))
    for name, step in summary.steps.items():
        counts = ", ".join(f"{n:,} {k}" for k, n in step["requests"].items() if n) or "none yet"
        console.print(f"    step {name}: {step['rows'].get('ok', 0):,} rows; {counts}")
    shards = ", ".join(f"{n} {step}" for step, n in summary.shards.items() if n) or "none"
    console.print(f"  shards: {shards}; {summary.poll_calls} poll calls in {summary.rounds} rounds")
    if summary.reconciled.get("quarantined"):
        console.print(f"  quarantined lines: {summary.reconciled['quarantined']} (kept whole in the ledger)")
    flex = summary.fallback
    if flex.get("sent"):
        seen = ", ".join(f"{n} x {code}" for code, n in sorted(flex["status_counts"].items())) or "none"
        console.print(f"  fallback ({flex['tier']}): {flex['sent']:,} calls, {flex['succeeded']:,} succeeded, "
                      f"{flex['failed']:,} failed, {flex['requeued']:,} retried; errors seen: {seen}; "
                      f"{flex['pace_rps']:.1f} req/s; "
                      + (f"cost ${flex['cost_usd']:.6f}" if summary.cost_known else "cost unknown"))
    _print_paths(console, summary)
    spent = summary.spent or {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    console.print(f"  this run: {int(spent['prompt_tokens']):,} prompt + "
                  f"{int(spent['completion_tokens']):,} completion tokens, "
                  + (f"cost ${spent['cost_usd']:.6f}" if summary.cost_known
                     else f"cost unknown (no price for {summary.model})")
                  + f"; the job so far: {int(t['prompt_tokens']):,} + {int(t['completion_tokens']):,} "
                  "tokens" + (f", ${t['cost_usd']:.6f}" if summary.cost_known else ""))
    console.print(f"  results: in the ledger {summary.ledger}")
    console.print(f"  export them joined to the input rows: groqbatch export {config} → {summary.output}")
    evaluation = summary.evaluation
    if evaluation is not None:
        if evaluation.get("skipped"):
            console.print(f"  evaluation: {evaluation['skipped']}")
        else:
            means = ", ".join(f"{name} {_mean(m['mean'])}" for name, m in evaluation["metrics"].items())
            console.print(f"  evaluation: {evaluation['answered']:,}/{evaluation['rows']:,} answered; {means}")
    for note in summary.notes:
        console.print(f"  note: {note}")
    console.print(("finished" if summary.finished else "not finished") + f" in {summary.elapsed_s:.1f}s")


_PATH_NAMES = {"batch": "batch", "rebatched": "re-batched leftovers", "flex": "flex",
               "on_demand": "on demand", "auto": "auto tier", "answered_twice": "answered twice"}


def _print_paths(console: Console, summary: RunSummary) -> None:
    """What each path cost, and what re-batching leftovers saved against flex."""
    paths = {name: p for name, p in summary.paths.items() if name in _PATH_NAMES and p["requests"]}
    if not summary.cost_known or not paths or set(paths) == {"batch"}:
        return
    shown = "; ".join(f"{_PATH_NAMES[name]} ${p['cost_usd']:.6f} "
                      + (f"({p['requests']:,} answers)" if name == "answered_twice"
                         else f"({p['succeeded']:,} answered)")
                      for name, p in sorted(paths.items(), key=lambda item: list(_PATH_NAMES).index(item[0])))
    console.print(f"  cost by path: {shown}")
    rebatched = paths.get("rebatched")
    if rebatched and "saved_usd" in rebatched:
        console.print(f"  re-batching {rebatched['requests']:,} leftovers cost ${rebatched['cost_usd']:.6f} "
                      f"instead of ${rebatched['flex_equivalent_usd']:.6f} on flex: "
                      f"saved ${rebatched['saved_usd']:.6f}")


SQUEEZED_WIDTH = 20
"""Widest a long id (shard key, batch id, worker, run name) is shown in ``status`` tables."""


def _table(title: str, *columns: str, right: tuple[str, ...] = (),
           squeeze: tuple[str, ...] = ()) -> Table:
    """A compact table (no vertical rules): only the ``squeeze`` columns (long ids) give way,
    shortened with …, so ``status`` fits an 80-column terminal and numbers stay whole."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  title_justify="left",
                  collapse_padding=True)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left",
                         no_wrap=True, overflow="ellipsis",
                         min_width=None if column in squeeze else len(column),
                         max_width=SQUEEZED_WIDTH if column in squeeze else None)
    return table


def _short_when(stamp: str | None) -> str:
    """``2026-11-29 01:54:30 UTC`` → ``11-29 01:54`` (the year and seconds are noise here)."""
    return stamp[5:16] if stamp else "—"


def _run_outcome(run: dict[str, Any], live_runs: set[int]) -> str:
    summary = run["summary"] or {}
    if summary.get("failed"):
        return f"error ({summary.get('exit_code', 1)})"
    if run["finished"] is None:
        return "running" if run["id"] in live_runs else "stopped"
    return "finished" if summary.get("finished") else "paused"


def _run_spent(summary: dict[str, Any]) -> str:
    spent = summary.get("spent")
    if spent is None:  # a run recorded before runs kept their own spend, or one that failed
        return "$0" if summary.get("failed") else "—"
    return f"${spent.get('cost_usd', 0):.6f}"


def print_status(status: dict[str, Any]) -> None:
    console = _console()
    console.soft_wrap = False  # long paths wrap at the width: every line fits the terminal
    console.print(f"job {status['job']!r} — ledger {status['ledger']}")
    requests = ", ".join(f"{n:,} {k}" for k, n in status["requests"].items() if n) or "none"
    console.print(f"requests: {requests}")
    totals = status["totals"]
    cost = (f"cost ${totals['cost_usd']:.6f} in all runs" if status.get("cost_known", True)
            else f"cost unknown — {status['cost_note']}")
    console.print(f"tokens: {int(totals['prompt_tokens']):,} prompt + {int(totals['completion_tokens']):,} "
                  f"completion; {cost}")
    for step in status.get("steps") or []:
        counts = ", ".join(f"{n:,} {k}" for k, n in step["requests"].items() if n) or "none yet"
        rows = step["rows"]
        console.print(f"  step {step['step']} ({step['model']}): {rows.get('ok', 0):,} rows"
                      + (f" ({rows['rejected']:,} rejected)" if rows.get("rejected") else "")
                      + f"; requests: {counts}")
    if status.get("kept_answers"):
        console.print(f"refreshing: {status['kept_answers']:,} requests asked again keep their "
                      "earlier answer until a new one arrives")
    live = [w for w in status.get("workers", []) if w["live"]]
    if live:
        table = _table("live workers", "worker", "run", "started", "last seen", "holds",
                       squeeze=("worker", "holds"))
        for w in live:
            holds = ", ".join(f"{n} {kind}" for kind, n in sorted(w["holds"].items())) or "nothing"
            table.add_row(w["worker"], str(w["run"]), _short_when(w["started"]),
                          _short_when(w["seen"]), holds)
        console.print(table)
    if status["shards"]:
        table = _table("shards", "shard", "lines", "step", "batch", "status", "done",
                       right=("lines", "done"), squeeze=("shard", "batch"))
        for shard in status["shards"]:
            batch = orjson.loads(shard["request_counts_json"]) if shard["request_counts_json"] else None
            done = (f"{batch.get('completed', 0) + batch.get('failed', 0)}/{batch.get('total', 0)}"
                    if batch else "—")
            table.add_row(shard["key"], str(shard["lines"]), shard["step"], shard["batch_id"] or "—",
                          shard["batch_status"] or "—", done)
        console.print(table)
    if status["runs"]:
        live_runs = {w["run"] for w in live}
        table = _table("runs (newest first)", "run", "name", "started", "outcome", "succeeded",
                       "failed", "flex", "spent",
                       right=("run", "succeeded", "failed", "flex", "spent"), squeeze=("name",))
        errors: list[str] = []
        for run in status["runs"]:
            summary = run["summary"] or {}
            flex = summary.get("fallback") or {}
            requests_then = summary.get("requests") or {}
            table.add_row(str(run["id"]), run["run_name"] or "—", _short_when(run["started"]),
                          _run_outcome(run, live_runs), str(requests_then.get("succeeded", "—")),
                          str(requests_then.get("failed", "—")), str(flex.get("sent", 0)),
                          _run_spent(summary))
            if summary.get("failed"):
                errors.append(f"run {run['id']}: {summary['failed']}")
        console.print(table)
        for line in errors:
            console.print(line, soft_wrap=False)


def _mean(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _delta(value: float | None) -> str:
    return "" if value is None else f" ({value:+.3f})"


def print_report(report: dict[str, Any]) -> None:
    """``groqbatch report``: one row per scored run, each scorer's mean and its change."""
    console = _console()
    runs = report["runs"]
    if not runs:
        console.print(f"job {report['job']!r}: no scored runs yet in {report['ledger']}")
        return
    table = Table(title=f"evaluation of job {report['job']!r} (oldest first)")
    for column in ("run", "name", "started", "answered"):
        table.add_column(column)
    for scorer in report["scorers"]:
        table.add_column(scorer, justify="right")
    for run in runs:
        cells = [str(run["run_id"]), run["run_name"] or "—", run["started"],
                 f"{run['answered']:,}/{run['rows']:,}"]
        for scorer in report["scorers"]:
            metric = run["metrics"].get(scorer)
            cells.append("—" if metric is None else _mean(metric["mean"]) + _delta(metric["delta"]))
        table.add_row(*cells)
    console.print(table)
