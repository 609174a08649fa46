"""What ``run`` says of its failures: reasons made short and comparable, ``--max-failed``
parsed, and a finished run judged against it (exit 4)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.errors import FinishedWithFailures, exit_code_for
from pipeline.failures import MaxFailed, check_failures, short_reason


@pytest.mark.parametrize(("last_error", "reason"), [
    ('{"message":"The model `x` does not exist","type":"invalid_request_error",'
     '"code":"model_not_found"}', "model_not_found: The model `x` does not exist"),
    ('flex: {"status":503,"error":{"message":"busy","type":"server_error","code":null}} '
     "(gave up after 4 attempts)", "503 server_error: busy"),
    ("missing: no line for this request in the batch's output or error file",
     "missing: no line for this request in the batch's output or error file"),
    (None, "no reason recorded"),
    ("x" * 300, "x" * 119 + "…"),
])
def test_short_reason(last_error: str | None, reason: str) -> None:
    assert short_reason(last_error) == reason


def test_the_same_error_of_two_requests_is_one_reason() -> None:
    a = '{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}'
    assert short_reason(a) == short_reason(a + " (gave up after 2 attempts)")


@pytest.mark.parametrize(("text", "total", "allowed"), [
    ("0", 1000, 0), ("5", 1000, 5), ("2%", 1000, 20), ("2.5%", 1000, 25), ("100%", 7, 7),
])
def test_max_failed(text: str, total: int, allowed: int) -> None:
    assert MaxFailed.parse(text).allowed(total) == allowed


@pytest.mark.parametrize("text", ["-1", "lots", "150%", "", "5 %x"])
def test_max_failed_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a count"):
        MaxFailed.parse(text)


def summary(*, finished: bool = True, failed: int = 0, retryable: int = 0,
            unsent_reason: str | None = None,
            daily_limit: dict[str, str] | None = None, budget_held: int = 0) -> SimpleNamespace:
    return SimpleNamespace(finished=finished, requests={"succeeded": 100 - failed - retryable,
                                                        "failed": failed, "retryable": retryable},
                           left_retryable=retryable, unsent_reason=unsent_reason,
                           failures=[("model_not_found: gone", failed)] if failed else [],
                           fallback={"daily_limit": daily_limit}, budget_held=budget_held)


def test_a_clean_run_passes() -> None:
    check_failures(summary(), MaxFailed())


def test_failures_beyond_the_tolerance_are_exit_4() -> None:
    with pytest.raises(FinishedWithFailures) as raised:
        check_failures(summary(failed=3, retryable=2, unsent_reason="the budget is spent"),
                       MaxFailed.parse("4"))
    error = raised.value
    assert exit_code_for(error) == 4
    assert (error.failed, error.unsent, error.total, error.allowed) == (3, 2, 100, 4)
    assert str(error) == ("finished with failures: 3 of 100 requests failed, 2 left unsent "
                          "(the budget is spent) (--max-failed allows 4): 3 x model_not_found: gone")
    check_failures(summary(failed=3, retryable=2), MaxFailed.parse("5%"))


def test_an_unfinished_run_is_not_judged_yet() -> None:
    check_failures(summary(finished=False, failed=50), MaxFailed())


def test_requests_the_budget_held_back_are_unanswered_too() -> None:
    with pytest.raises(FinishedWithFailures) as raised:
        check_failures(summary(budget_held=40, unsent_reason="the budget is reached"),
                       MaxFailed())
    assert raised.value.unsent == 40
    check_failures(summary(budget_held=40), MaxFailed.parse("40%"))


def test_a_run_stopped_for_today_is_a_pause_not_a_failure() -> None:
    # The day's request limit is spent: what is left is sent once it resets.
    stopped = {"limit": "requests per day (RPD) 14400", "resets_at": "2026-11-30T00:00:00Z"}
    check_failures(summary(retryable=40, daily_limit=stopped), MaxFailed())
    with pytest.raises(FinishedWithFailures):
        check_failures(summary(retryable=40), MaxFailed())
