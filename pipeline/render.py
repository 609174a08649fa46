"""Human-readable output of the CLI (rich tables); ``--json`` bypasses all of this."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jobs import PlanReport

from .runner import Progress, RunSummary


def _console() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # logs and pipes: do not squeeze tables into 80 columns
        console = Console(highlight=False, soft_wrap=True, width=160)
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
        table.add_row(escape("within [policy.budget]"),
                      f"{len(fit)} of {len(report.shards)} shards, {plan.budget_fits:,} requests")
        if plan.budget_held:
            table.add_row(f"held back by {plan.budget_reached}", f"{plan.budget_held:,} requests")
    table.add_row("estimated prompt tokens", f"{report.est_prompt_tokens:,}")
    table.add_row("estimated completion tokens", f"{report.est_completion_tokens:,}")
    if plan.cost_batch_usd is not None:
        table.add_row("estimated cost (batch, 50% off)", f"${plan.cost_batch_usd:,.4f}")
        table.add_row("same on demand", f"${plan.cost_on_demand_usd or 0:,.4f}")
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
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


class ProgressDisplay:
    """Shows :class:`~pipeline.runner.Progress` snapshots: a live panel on a terminal, one plain
    line per change otherwise (logs, cron), nothing when quiet. Writes to stderr, so stdout
    stays clean for ``--json``."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False)
        self._live: Any = None
        self._last: tuple[Any, ...] | None = None

    def __call__(self, progress: Progress) -> None:
        if self.quiet:
            return
        if self.console.is_terminal:
            from rich.live import Live

            if self._live is None:
                self._live = Live(console=self.console, refresh_per_second=4, transient=False)
                self._live.start()
            self._live.update(self._panel(progress))
            return
        state = (tuple(sorted(progress.shards.items())), tuple(sorted(progress.requests.items())))
        if state != self._last:
            self._last = state
            self.console.print(self._line(progress))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    @staticmethod
    def _line(progress: Progress) -> str:
        shards = " ".join(f"{step}={n}" for step, n in progress.shards.items() if n)
        left = progress.total - progress.done
        eta = f", eta {progress.eta_s:.0f}s" if progress.eta_s is not None and left else ""
        return (f"[{progress.elapsed_s:6.1f}s] shards: {shards or 'none'} | requests: "
                f"{progress.requests.get('succeeded', 0)} done, {progress.requests.get('failed', 0)} "
                f"failed, {left} left{eta}")

    def _panel(self, progress: Progress) -> Table:
        table = Table(title=f"groqbatch: {progress.job}", show_header=True)
        table.add_column("shards")
        table.add_column("n", justify="right")
        table.add_column("requests")
        table.add_column("n", justify="right")
        shard_rows = [(k, v) for k, v in progress.shards.items() if v]
        request_rows = [(k, v) for k, v in progress.requests.items() if v]
        for i in range(max(len(shard_rows), len(request_rows), 1)):
            s = shard_rows[i] if i < len(shard_rows) else ("", "")
            r = request_rows[i] if i < len(request_rows) else ("", "")
            table.add_row(s[0], str(s[1]), r[0], str(r[1]))
        eta = f"{progress.eta_s:.0f}s" if progress.eta_s is not None else "—"
        table.caption = f"elapsed {progress.elapsed_s:.1f}s · {progress.done}/{progress.total} done · eta {eta}"
        return table


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
    console.print(f"  tokens: {int(t['prompt_tokens']):,} prompt + {int(t['completion_tokens']):,} completion; "
                  + (f"cost ${t['cost_usd']:.6f}" if summary.cost_known
                     else f"cost unknown (no price for {summary.model})"))
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
        console.print(f"  note: {escape(note)}")  # notes name tables: [policy.budget]
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


def print_status(status: dict[str, Any]) -> None:
    console = _console()
    console.print(f"job {status['job']!r} — ledger {status['ledger']}")
    requests = ", ".join(f"{n:,} {k}" for k, n in status["requests"].items() if n) or "none"
    console.print(f"requests: {requests}")
    totals = status["totals"]
    cost = (f"cost ${totals['cost_usd']:.6f}" if status.get("cost_known", True)
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
        table = Table(title="live workers")
        for column in ("worker", "run", "started", "last seen", "holds"):
            table.add_column(column)
        for w in live:
            holds = ", ".join(f"{n} {kind}" for kind, n in sorted(w["holds"].items())) or "nothing"
            table.add_row(w["worker"], str(w["run"]), w["started"], w["seen"], holds)
        console.print(table)
    if status["shards"]:
        table = Table(title="shards")
        for column in ("shard", "lines", "step", "batch", "batch status", "counts"):
            table.add_column(column)
        for shard in status["shards"]:
            table.add_row(shard["key"], str(shard["lines"]), shard["step"], shard["batch_id"] or "—",
                          shard["batch_status"] or "—", shard["request_counts_json"] or "—")
        console.print(table)
    if status["runs"]:
        table = Table(title="runs (newest first)")
        for column in ("run", "name", "backend", "started", "finished", "succeeded", "fallback",
                       "429/498/5xx", "cost"):
            table.add_column(column)
        for run in status["runs"]:
            summary = run["summary"] or {}
            flex = summary.get("fallback") or {}
            codes = flex.get("status_counts") or {}
            errors = "/".join(str(codes.get(code, 0)) for code in ("429", "498"))
            errors += "/" + str(sum(n for code, n in codes.items() if code.startswith("5")))
            table.add_row(str(run["id"]), run["run_name"] or "—", run["backend"], run["started"],
                          run["finished"] or "—", str((summary.get("requests") or {}).get("succeeded", "—")),
                          f"{flex.get('sent', 0)} ({flex.get('tier', '—')})", errors,
                          f"${(summary.get('totals') or {}).get('cost_usd', 0):.6f}")
        console.print(table)


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
