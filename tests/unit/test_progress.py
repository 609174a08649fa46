"""The progress display, rendered to fixed-width consoles at several points of a 5,000-request
run: each phase named, batch progress counted from the batches' own ``request_counts``, the
rate and ETA from that progress, ``finalizing`` shown as such, and no line wider than the
console (80 and 160 columns) or wrapped."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from pipeline.progress import ProgressDisplay, ProgressView
from pipeline.runner import Progress

TOTAL = 5_000
STEPS = ("compiled", "uploading", "uploaded", "submitting", "submitted", "settled", "reconciled",
         "dropped")
JOB = "a-job-with-a-rather-long-name-for-a-narrow-terminal-and-then-some-more"


def snapshot(elapsed_s: float, *, shards: dict[str, int], requests: dict[str, int],
             batches: dict[str, int] | None = None, batch_done: int = 0, flex_sent: int = 0,
             flex_pace_rps: float = 0.0) -> Progress:
    steps = {step: 0 for step in STEPS} | shards
    counts = {"pending": 0, "queued": 0, "submitted": 0, "succeeded": 0, "failed": 0,
              "retryable": 0, "in_flight": 0} | requests
    return Progress(JOB, 1, elapsed_s, steps, counts, batches or {}, batch_done=batch_done,
                    batch_lines=TOTAL if batches else 0, flex_sent=flex_sent,
                    flex_pace_rps=flex_pace_rps)


# A 5,000-request run: five shards of 1,000, then a few left to the flex fallback.
RUN = [
    snapshot(0.4, shards={"compiled": 5}, requests={"queued": TOTAL}),
    snapshot(1.0, shards={"uploaded": 2, "compiled": 3}, requests={"queued": TOTAL}),
    snapshot(2.0, shards={"submitted": 5}, requests={"submitted": TOTAL},
             batches={"validating": 5}),
    snapshot(12.0, shards={"submitted": 5}, requests={"submitted": TOTAL},
             batches={"in_progress": 5}, batch_done=1_000),
    snapshot(22.0, shards={"submitted": 5}, requests={"submitted": TOTAL},
             batches={"in_progress": 5}, batch_done=3_000),
    snapshot(27.0, shards={"submitted": 5}, requests={"submitted": TOTAL},
             batches={"finalizing": 5}, batch_done=TOTAL - 40),
    snapshot(29.0, shards={"submitted": 2, "settled": 3}, requests={"submitted": TOTAL},
             batches={"finalizing": 2, "completed": 3}, batch_done=TOTAL - 40),
    snapshot(31.0, shards={"reconciled": 3, "settled": 2}, requests={"succeeded": 2_980, "submitted": 2_000},
             batches={"completed": 2}, batch_done=2_000 - 20),
    snapshot(33.0, shards={"reconciled": 5}, requests={"succeeded": 4_960, "retryable": 28, "in_flight": 8,
                                                        "failed": 4}, flex_sent=12, flex_pace_rps=6.0),
    snapshot(36.0, shards={"reconciled": 5}, requests={"succeeded": 4_996, "failed": 4},
             flex_sent=40, flex_pace_rps=12.0),
]
PHASES = ["submitting", "submitting", "batches running", "batches running", "batches running",
          "finalizing", "finalizing", "reconciling", "flex fallback", "done"]


def render(width: int, renderable: object) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(renderable)
    return out.getvalue().splitlines()


def test_each_point_of_the_run_is_named_by_its_phase() -> None:
    assert [ProgressView.phase(p) for p in RUN] == PHASES
    compiling = snapshot(0.1, shards={}, requests={})
    assert ProgressView.phase(compiling) == "compiling"


@pytest.mark.parametrize("width", [80, 160])
def test_the_panel_never_wraps_or_overflows(width: int) -> None:
    display = ProgressDisplay(console=Console(file=io.StringIO(), width=width))
    for progress in RUN:
        display.view.update(progress)
        expected = display.view.panel_lines(progress)
        lines = render(width, display.renderable(progress))
        assert len(lines) == len(expected), f"a line wrapped: {lines}"
        assert all(len(line) <= width for line in lines)
        if width == 160:  # wide enough: nothing is cut
            assert lines == expected


def test_the_panel_counts_what_running_batches_report_done() -> None:
    view = ProgressView()
    for progress in RUN[:5]:
        view.update(progress)
    lines = render(160, ProgressDisplay().renderable(RUN[4]))
    # A new display has no past: no rate yet. The view that saw the run has one.
    assert lines[2] == "batches: 5 in_progress"
    assert lines[3] == "requests: 3,000/5,000 done"
    text = view.panel_lines(RUN[4])
    assert text[0] == f"{JOB} · batches running · 22.0s"
    assert text[1] == "compiled 5,000 requests · shards: 5 submitted"
    # 3,000 done since the first snapshot, 21.6 s ago (within the 30 s window): 139/s; 2,000
    # left: 14 s.
    assert text[3] == "requests: 3,000/5,000 done · 139/s · eta 14s"


def test_finalizing_is_not_done() -> None:
    view = ProgressView()
    for progress in RUN[:6]:
        view.update(progress)
    text = view.panel_lines(RUN[5])
    assert text[0].startswith(f"{JOB} · finalizing")
    assert text[2] == "batches: 5 finalizing"
    assert text[3].startswith("requests: 4,960/5,000 done")
    assert view.line(RUN[5]).startswith("[  27.0s] finalizing: 5 finalizing · 4,960/5,000 done")


def test_the_flex_fallback_shows_its_pace() -> None:
    view = ProgressView()
    for progress in RUN[:9]:
        view.update(progress)
    text = view.panel_lines(RUN[8])
    assert text[-1] == "flex: 8 in flight, 36 to go, 12 sent · 6.0/s"
    assert text[-2].startswith("requests: 4,964/5,000 done (4 failed)")
    assert view.line(RUN[8]).startswith("[  33.0s] flex fallback: 8 in flight, 6.0/s · 4,964/5,000")


def test_the_rate_is_measured_over_the_recent_window() -> None:
    view = ProgressView(window_s=10)
    for progress in RUN[:5]:
        view.update(progress)
    # Only 12 s → 22 s is in the window: 2,000 in 10 s.
    assert view.rate() == pytest.approx(200.0)
    assert view.eta_s(RUN[4]) == pytest.approx(10.0)


@pytest.mark.parametrize("width", [80, 160])
def test_logs_get_one_line_per_change_that_fits(width: int) -> None:
    out = io.StringIO()
    display = ProgressDisplay(console=Console(file=out, width=width, force_terminal=False))
    for progress in RUN:
        display(progress)
        display(progress)  # the same again: no new line
    display.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(RUN), lines
    assert all(len(line) <= width for line in lines)
    assert [line.split("] ", 1)[1].split(":")[0].split(" ·")[0] for line in lines] == PHASES
    assert lines[0] == "[   0.4s] submitting: 0/5 shards uploaded, 0 submitted · 0/5,000 done"
    assert lines[1].startswith("[   1.0s] submitting: 2/5 shards uploaded, 0 submitted")
    assert lines[-1] == "[  36.0s] done · 5,000/5,000 done (4 failed)"


def test_quiet_shows_nothing() -> None:
    out = io.StringIO()
    display = ProgressDisplay(quiet=True, console=Console(file=out, width=80))
    for progress in RUN:
        display(progress)
    assert out.getvalue() == ""
