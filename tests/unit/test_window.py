"""``completion_window = "auto"``: the longest window that leaves the fallback time before the
deadline; 24h without one; ``plan`` says which and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs import load_job, plan_job
from jobs.policy import PolicySpec
from jobs.window import choose_window, flex_pace
from pipeline.errors import ConfigError

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def auto(**policy: object) -> PolicySpec:
    return PolicySpec.model_validate({"completion_window": "auto", **policy})


def test_a_fixed_window_is_kept() -> None:
    choice = choose_window(PolicySpec(completion_window="3d"), now=NOW,
                           deadline=NOW + timedelta(days=1), requests=10)
    assert choice.window == "3d"


def test_auto_without_a_deadline_is_24h() -> None:
    choice = choose_window(auto(), now=NOW, deadline=None, requests=1000)
    assert (choice.window, choice.reason) == ("24h", "auto without a deadline: 24h")


@pytest.mark.parametrize(
    ("deadline_h", "reserve", "expected"),
    [
        (240, "6h", "7d"),  # plenty of room: the longest
        (100, "6h", "94h"),  # the longest whole hours that end in time
        (100, "6.5h", "93h"),
        (30, "6h", "24h"),  # exactly 24h of room
        (20, "6h", "24h"),  # no window ends in time: the shortest, and the deadline acts
    ],
)
def test_auto_with_a_deadline_leaves_the_reserve(deadline_h: int, reserve: str,
                                                  expected: str) -> None:
    choice = choose_window(auto(fallback_reserve=reserve), now=NOW,
                           deadline=NOW + timedelta(hours=deadline_h), requests=5)
    assert choice.window == expected
    assert "fallback_reserve" in choice.reason


def test_the_reserve_follows_the_flex_pace_seen_so_far() -> None:
    policy = auto()
    deadline = NOW + timedelta(hours=100)
    # 36,000 requests at 10/s: 1h of fallback → 99h; at the assumed 1/s: 10h → 90h.
    seen = choose_window(policy, now=NOW, deadline=deadline, requests=36_000, pace_rps=10.0)
    assert seen.window == "99h"
    assert "flex pace seen so far, 10.00/s" in seen.reason
    assumed = choose_window(policy, now=NOW, deadline=deadline, requests=36_000)
    assert assumed.window == "90h"
    assert "assumed 1/s" in assumed.reason
    # The fallback off: nothing to keep time for.
    off = auto(fallback={"enabled": False})
    assert choose_window(off, now=NOW, deadline=deadline, requests=36_000).window == "100h"


def test_flex_pace_is_calls_over_stage_time_across_runs() -> None:
    runs = [{"fallback": {"sent": 30, "elapsed_s": 10.0}}, {"fallback": {"sent": 0}}, None,
            {"fallback": {"sent": 10, "elapsed_s": 10.0}}]
    assert flex_pace(runs) == 2.0
    assert flex_pace([{"fallback": {"sent": 0, "elapsed_s": 0}}]) is None


def test_auto_and_fallback_reserve_in_a_config(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    config = tmp_path / "job.toml"
    config.write_text('name = "w"\nmodel = "llama-3.1-8b-instant"\n[input]\npath = "rows.jsonl"\n'
                      '[prompt]\nuser = "{{ text }}"\n[policy]\ncompletion_window = "auto"\n'
                      'deadline = "5d"\nfallback_reserve = "12h"\n')
    spec = load_job(config)
    assert spec.policy.fallback_reserve == timedelta(hours=12)
    assert spec.policy.completion_window_s is None
    plan = plan_job(spec, None)
    assert plan.completion_window == "108h"  # 5 days less 12h, from now (it never ran)
    assert "fallback_reserve" in (plan.window_reason or "")
    config.write_text(config.read_text().replace('"12h"', '"soon"'))
    with pytest.raises(ConfigError) as error:
        load_job(config)
    assert error.value.field == "policy.fallback_reserve"
    assert error.value.line == 10
