"""``groqbatch report``: an evaluation job's metrics per run, and their trend.

    report = evaluation_report(load_job("configs/evaluate.yaml"))
    report["runs"][-1]["metrics"]["exact"]      # {"kind": "exact", "mean": 0.9, "n": 20, "delta": 0.05}
    write_html(Path("report.html"), render_html(report))

Runs come oldest first (the order of a trend); ``delta`` is the change of a scorer's mean
from the previous run that has one. ``started`` is when the run's series began — the first
invocation sharing its ``--run-name`` — and ``scored`` when the invocation that finished it
recorded the scores. The ledger is only read; a job that never ran has no runs.

The HTML page is one self-contained file: inline CSS, an inline SVG line chart per scorer
(mean per run, 0 to 1), and the table — no script, no external resource. It is written to a
temporary file beside the target and renamed over it, so a reader never sees half a page.
"""

from __future__ import annotations

import html
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs import JobSpec

from .planning import existing_ledger

__all__ = ["evaluation_report", "render_html", "write_html"]


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def evaluation_report(spec: JobSpec, *, last: int | None = None) -> dict[str, Any]:
    """The job's scored runs (the ``last`` N, oldest first) with each scorer's mean and delta."""
    ledger = existing_ledger(spec)
    found: list[dict[str, Any]] = []
    ledger_url = spec.ledger_target
    if ledger is not None:
        with ledger:
            ledger_url = ledger.url
            found = ledger.evaluations(spec.name, limit=last)
    scorers = [s.label for s in spec.evaluate.scorers] if spec.evaluate is not None else []
    for item in found:
        scorers += [name for name in item["metrics"] if name not in scorers]
    previous: dict[str, float] = {}
    runs = []
    for item in found:
        metrics: dict[str, dict[str, Any]] = {}
        for name in scorers:
            metric = item["metrics"].get(name)
            if metric is None:
                continue
            mean = metric["mean"]
            delta = mean - previous[name] if mean is not None and name in previous else None
            metrics[name] = {**metric, "delta": delta}
            if mean is not None:
                previous[name] = mean
        runs.append({
            "run_id": item["run_id"],
            "run_name": item["run_name"],
            "identity": item["identity"],
            "started": _iso(item["first_started_at"]),
            "scored": _iso(item["scored_at"]),
            "rows": item["rows"],
            "answered": item["answered"],
            "failed": item["failed"],
            "metrics": metrics,
        })
    return {"job": spec.name, "ledger": ledger_url, "scorers": scorers, "runs": runs}


# -- HTML -----------------------------------------------------------------------------------

_WIDTH, _HEIGHT = 640, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 16, 16, 40
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.3rem; } figure { margin: 1.5rem 0; } figcaption { font-weight: 600; }
table { border-collapse: collapse; } th, td { padding: .25rem .6rem; border-bottom: 1px solid #ddd; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } .up { color: #17803d; } .down { color: #b42318; }
svg text { font: 11px system-ui, sans-serif; fill: #555; }
"""


def _label(run: dict[str, Any]) -> str:
    return str(run["run_name"] or f"run {run['run_id']}")


def _chart(scorer: str, runs: list[dict[str, Any]]) -> str:
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    step = plot_w / max(len(runs) - 1, 1)

    def x(i: int) -> float:
        return _LEFT + (i * step if len(runs) > 1 else plot_w / 2)

    def y(value: float) -> float:
        return _TOP + (1 - value) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
             f'width="{_WIDTH}" height="{_HEIGHT}" role="img" '
             f'aria-label="{html.escape(scorer)}: mean score per run">']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    segment: list[str] = []
    segments: list[list[str]] = [segment]
    points = []
    for i, run in enumerate(runs):
        mean = (run["metrics"].get(scorer) or {}).get("mean")
        if mean is None:
            segment = []
            segments.append(segment)
            continue
        segment.append(f"{x(i):.1f},{y(mean):.1f}")
        tip = html.escape(f"{_label(run)}: {mean:.3f}")
        points.append(f'<circle cx="{x(i):.1f}" cy="{y(mean):.1f}" r="3.5" fill="#2563eb">'
                      f"<title>{tip}</title></circle>")
    for seg in segments:
        if len(seg) > 1:
            parts.append(f'<polyline fill="none" stroke="#2563eb" stroke-width="2" '
                         f'points="{" ".join(seg)}"/>')
    parts += points
    every = max(1, len(runs) // 8)
    for i, run in enumerate(runs):
        if i % every == 0 or i == len(runs) - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{_HEIGHT - _BOTTOM + 16}" text-anchor="middle">'
                         f"{html.escape(_label(run)[:18])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _cell(metric: dict[str, Any] | None) -> str:
    if metric is None or metric["mean"] is None:
        return '<td class="n">—</td>'
    delta = metric["delta"]
    shown = f"{metric['mean']:.3f}"
    if delta is not None:
        kind = "up" if delta > 0 else "down" if delta < 0 else ""
        shown += f' <span class="{kind}">({delta:+.3f})</span>'
    return f'<td class="n">{shown}</td>'


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no script)."""
    esc = html.escape
    runs: list[dict[str, Any]] = report["runs"]
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>groqbatch evaluation: {esc(report['job'])}</title>",
           f"<style>{_STYLE}</style></head><body>",
           f"<h1>Evaluation of job {esc(report['job'])}</h1>",
           f"<p>{len(runs)} scored runs, from the ledger {esc(report['ledger'])}.</p>"]
    if runs:
        for scorer in report["scorers"]:
            kind = next((r["metrics"][scorer]["kind"] for r in runs if scorer in r["metrics"]), "")
            out.append(f"<figure><figcaption>{esc(scorer)} <small>({esc(kind)})</small>"
                       f"</figcaption>{_chart(scorer, runs)}</figure>")
        head = "".join(f"<th>{esc(s)}</th>" for s in report["scorers"])
        out.append(f"<table><thead><tr><th>run</th><th>name</th><th>started</th><th>answered</th>"
                   f"{head}</tr></thead><tbody>")
        for run in reversed(runs):  # newest first in the table
            cells = "".join(_cell(run["metrics"].get(s)) for s in report["scorers"])
            out.append(f"<tr><td>{run['run_id']}</td><td>{esc(run['run_name'] or '—')}</td>"
                       f"<td>{esc(run['started'] or '')}</td>"
                       f'<td class="n">{run["answered"]}/{run["rows"]}</td>{cells}</tr>')
        out.append("</tbody></table>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_html(path: Path, page: str) -> None:
    """Write ``page`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(page)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp makes the file 0600; a report is for reading, so keep the target's mode
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
