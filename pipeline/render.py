"""Human-readable output of the CLI (rich tables); ``--json`` bypasses all of this."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from jobs import PlanReport


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


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
    table.add_row("unique requests", f"{report.unique_requests:,}")
    table.add_row("already answered (cached)", f"{report.already_answered:,}")
    table.add_row("to send", f"{report.to_send:,}")
    sizes = ", ".join(f"{s.lines:,} lines / {human_bytes(s.bytes)}" for s in report.shards[:5])
    more = f" (+{len(report.shards) - 5} more)" if len(report.shards) > 5 else ""
    table.add_row("shards", f"{len(report.shards)}" + (f": {sizes}{more}" if sizes else ""))
    table.add_row("estimated prompt tokens", f"{report.est_prompt_tokens:,}")
    table.add_row("estimated completion tokens", f"{report.est_completion_tokens:,}")
    if plan.cost_batch_usd is not None:
        table.add_row("estimated cost (batch, 50% off)", f"${plan.cost_batch_usd:,.4f}")
        table.add_row("same on demand", f"${plan.cost_on_demand_usd or 0:,.4f}")
    console.print(table)
    for rejection in plan.rejections:
        console.print(f"rejected row {rejection['row_key']} (#{rejection['row_index']}): {rejection['reason']}")
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
