"""Guarded status moves: the legal-move tables, replays, refresh, shard steps."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import LedgerError
from state import (
    CHUNK_SIZE,
    REQUEST_MOVES,
    SHARD_MOVES,
    Ledger,
    RequestRecord,
    RequestStatus,
    ResultRecord,
    ResultSource,
    RowRecord,
    ShardRecord,
    ShardStep,
)
from tests.ledgers import sqlite_file

S = RequestStatus
ILLEGAL_MOVES = sorted(set(itertools.product(S, S)) - REQUEST_MOVES)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        opened.record_job("enrich", "h", "{}")
        yield opened


def _add(ledger: Ledger, ids: list[str]) -> None:
    ledger.record_requests(RequestRecord(i, "/v1/chat/completions", b"{}") for i in ids)
    ledger.record_rows("enrich", (RowRecord(f"row-{i}", n, i, None) for n, i in enumerate(ids)))


def _bring_to(ledger: Ledger, ids: list[str], status: RequestStatus) -> None:
    """Walk requests from pending to ``status`` along legal moves."""
    path = {
        S.PENDING: [],
        S.QUEUED: [S.QUEUED],
        S.SUBMITTED: [S.QUEUED, S.SUBMITTED],
        S.SUCCEEDED: [S.QUEUED, S.SUBMITTED, S.SUCCEEDED],
        S.FAILED: [S.QUEUED, S.SUBMITTED, S.FAILED],
        S.RETRYABLE: [S.QUEUED, S.SUBMITTED, S.RETRYABLE],
        S.IN_FLIGHT: [S.QUEUED, S.SUBMITTED, S.RETRYABLE, S.IN_FLIGHT],
    }[status]
    current = S.PENDING
    for step in path:
        assert ledger.transition(ids, current, step) == len(ids)
        current = step


def test_the_move_table_is_the_documented_one() -> None:
    assert {(a.value, b.value) for a, b in REQUEST_MOVES} == {
        ("pending", "queued"),
        ("queued", "pending"),
        ("queued", "submitted"),
        ("submitted", "succeeded"),
        ("submitted", "failed"),
        ("submitted", "retryable"),
        ("retryable", "in_flight"),
        ("in_flight", "succeeded"),
        ("in_flight", "failed"),
        ("in_flight", "retryable"),
        ("pending", "retryable"),
        ("queued", "retryable"),
        ("retryable", "failed"),
        ("retryable", "pending"),
    }


@pytest.mark.parametrize(("from_", "to"), ILLEGAL_MOVES, ids=lambda s: s.value)
def test_every_illegal_move_is_refused_and_changes_nothing(
    ledger: Ledger, from_: RequestStatus, to: RequestStatus
) -> None:
    _add(ledger, ["a"])
    _bring_to(ledger, ["a"], from_)
    with pytest.raises(LedgerError, match=f"illegal request move {from_.value} → {to.value}"):
        ledger.transition(["a"], from_, to)
    assert ledger.statuses(["a"]) == {"a": from_}


@pytest.mark.parametrize(("from_", "to"), sorted(REQUEST_MOVES), ids=lambda s: s.value)
def test_every_legal_move_moves_once_and_a_replay_moves_nothing(
    ledger: Ledger, from_: RequestStatus, to: RequestStatus
) -> None:
    _add(ledger, ["a", "b"])
    _bring_to(ledger, ["a"], from_)
    assert ledger.transition(["a", "b", "ghost"], from_, to) == (2 if from_ is S.PENDING else 1)
    assert ledger.statuses(["a"]) == {"a": to}
    assert ledger.transition(["a"], from_, to) == 0
    assert ledger.statuses(["a"]) == {"a": to}


def test_succeeded_to_pending_points_at_refresh(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="only refresh"):
        ledger.transition(["a"], S.SUCCEEDED, S.PENDING)


def test_transition_sets_fields_and_counts_attempts(ledger: Ledger, ledger_url: str) -> None:
    path = sqlite_file(ledger_url)
    _add(ledger, ["a", "b"])
    _bring_to(ledger, ["a", "b"], S.RETRYABLE)
    ledger.transition(["a"], S.RETRYABLE, S.IN_FLIGHT, tier="flex")
    ledger.transition(["a"], S.IN_FLIGHT, S.RETRYABLE, last_error="HTTP 498")
    ledger.transition(["a"], S.RETRYABLE, S.IN_FLIGHT)
    with sqlite3.connect(path) as connection:
        rows = dict(
            (r[0], r[1:])
            for r in connection.execute(
                "SELECT custom_id, attempts, tier, last_error FROM requests"
            )
        )
    connection.close()
    assert rows == {"a": (3, "flex", "HTTP 498"), "b": (1, None, None)}


def test_transition_refuses_unknown_fields_and_tiers(ledger: Ledger) -> None:
    _add(ledger, ["a"])
    with pytest.raises(TypeError, match="status"):
        ledger.transition(["a"], S.PENDING, S.QUEUED, status="succeeded")
    with pytest.raises(ValueError, match="turbo"):
        ledger.transition(["a"], S.PENDING, S.QUEUED, tier="turbo")
    assert ledger.statuses(["a"]) == {"a": S.PENDING}


def test_transition_spans_chunks_in_one_call(ledger: Ledger) -> None:
    ids = [f"r{i:06d}" for i in range(CHUNK_SIZE + 7)]
    _add(ledger, ids)
    assert ledger.transition(iter(ids), S.PENDING, S.QUEUED) == len(ids)
    assert ledger.request_counts()["queued"] == len(ids)


def test_transition_shard_moves_the_shards_requests_only(ledger: Ledger) -> None:
    _add(ledger, ["a", "b", "c"])
    ledger.record_shard("enrich", ShardRecord("s1", "p", "h", 2, 9), ["a", "b"])
    ledger.record_shard("enrich", ShardRecord("s2", "p", "h", 1, 9), ["c"])
    assert ledger.transition_shard("s1", S.QUEUED, S.SUBMITTED) == 2
    assert ledger.transition_shard("s1", S.QUEUED, S.SUBMITTED) == 0
    assert ledger.statuses(["a", "b", "c"]) == {"a": S.SUBMITTED, "b": S.SUBMITTED, "c": S.QUEUED}
    with pytest.raises(LedgerError, match="illegal"):
        ledger.transition_shard("s1", S.SUBMITTED, S.PENDING)


def test_refresh_reopens_succeeded_requests_and_keeps_their_answers(ledger: Ledger) -> None:
    _add(ledger, ["a", "b", "c"])
    _bring_to(ledger, ["a", "b", "c"], S.SUBMITTED)
    ledger.record_results(
        ResultRecord(i, outcome, ResultSource.BATCH, 200, b"{}")
        for i, outcome in (("a", S.SUCCEEDED), ("b", S.SUCCEEDED), ("c", S.FAILED))
    )
    assert ledger.refresh(["a", "c", "ghost"]) == 1
    assert ledger.statuses(["a", "b", "c"]) == {"a": S.PENDING, "b": S.SUCCEEDED, "c": S.FAILED}
    # The earlier answer stays until a new one replaces it.
    assert {r.custom_id for r in ledger.results_for(["a", "b", "c"])} == {"a", "b", "c"}
    assert ledger.kept_answers("enrich") == 1
    assert [c for c, _ in ledger.iter_pending("enrich")] == ["a"]
    assert ledger.refresh(["a"]) == 0


def test_a_new_answer_replaces_a_refreshed_one_and_the_old_goes_to_history(ledger: Ledger) -> None:
    _add(ledger, ["a", "b"])
    _bring_to(ledger, ["a", "b"], S.SUBMITTED)
    ledger.record_results(
        ResultRecord(i, S.SUCCEEDED, ResultSource.BATCH, 200, b'{"v": "old"}') for i in ("a", "b")
    )
    assert ledger.refresh(["a", "b"]) == 2
    _bring_to(ledger, ["a", "b"], S.SUBMITTED)
    # a: a retryable line (an expired batch) never replaces the earlier answer; b: a new one does.
    ledger.record_results([
        ResultRecord("a", S.RETRYABLE, ResultSource.BATCH, None, None, error='{"code": "x"}'),
        ResultRecord("b", S.SUCCEEDED, ResultSource.BATCH, 200, b'{"v": "new"}'),
    ])
    bodies = {r.custom_id: r.body for r in ledger.results_for(["a", "b"])}
    assert bodies == {"a": b'{"v": "old"}', "b": b'{"v": "new"}'}
    assert [h["body"] for h in ledger.result_history("b")] == [b'{"v": "old"}']
    assert ledger.result_history("a") == []


def test_answered_ids_across_chunks(ledger: Ledger) -> None:
    ids = [f"r{i:06d}" for i in range(CHUNK_SIZE * 2 + 11)]
    _add(ledger, ids)
    _bring_to(ledger, ids, S.SUBMITTED)
    answered = ids[::3]
    ledger.transition(answered, S.SUBMITTED, S.SUCCEEDED)
    ledger.transition(ids[1::3], S.SUBMITTED, S.FAILED)
    assert ledger.answered_ids(iter([*ids, "ghost"])) == set(answered)


def test_set_shard_step_is_guarded(ledger: Ledger) -> None:
    ledger.record_shard("enrich", ShardRecord("s1", "p", "h", 1, 9), [])
    assert ledger.set_shard_step("s1", ShardStep.COMPILED, ShardStep.UPLOADING)
    assert not ledger.set_shard_step("s1", ShardStep.COMPILED, ShardStep.UPLOADING)  # replay
    assert ledger.set_shard_step("s1", ShardStep.UPLOADING, ShardStep.UPLOADED, file_id="file_1")
    assert ledger.set_shard_step("s1", ShardStep.UPLOADED, ShardStep.SUBMITTING)
    assert ledger.set_shard_step(
        "s1", ShardStep.SUBMITTING, ShardStep.SUBMITTED, batch_id="batch_1"
    )
    assert ledger.set_shard_step(  # polling records fields without moving
        "s1",
        ShardStep.SUBMITTED,
        ShardStep.SUBMITTED,
        batch_status="in_progress",
        request_counts_json={"total": 1, "completed": 0},
    )
    (shard,) = ledger.shards("enrich")
    assert (shard["step"], shard["file_id"], shard["batch_id"], shard["batch_status"]) == (
        "submitted",
        "file_1",
        "batch_1",
        "in_progress",
    )
    assert shard["request_counts_json"] == '{"completed":0,"total":1}'
    assert not ledger.set_shard_step("ghost", ShardStep.COMPILED, ShardStep.UPLOADING)


@pytest.mark.parametrize(
    ("from_", "to"),
    sorted(set(itertools.product(ShardStep, ShardStep)) - SHARD_MOVES),
    ids=lambda s: s.value,
)
def test_illegal_shard_moves_are_refused(ledger: Ledger, from_: ShardStep, to: ShardStep) -> None:
    with pytest.raises(LedgerError, match=f"illegal shard move {from_.value} → {to.value}"):
        ledger.set_shard_step("s1", from_, to)


def test_set_shard_step_refuses_unknown_fields(ledger: Ledger) -> None:
    with pytest.raises(TypeError, match="step"):
        ledger.set_shard_step("s1", ShardStep.COMPILED, ShardStep.UPLOADING, step="reconciled")


# A request's life as a model: the ledger must agree with it after any sequence of moves,
# legal or not, replayed or not. ``from_`` is usually the request's real state (so moves happen),
# sometimes any state (so guards and refusals are exercised).
def test_random_move_sequences_agree_with_the_model(ledger: Ledger) -> None:
    rounds = itertools.count()

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), steps=st.integers(min_value=1, max_value=30))
    def check(data: st.DataObject, steps: int) -> None:
        names = [f"{next(rounds)}-{n}" for n in "abc"]
        _add(ledger, names)
        model = dict.fromkeys(names, S.PENDING)
        for _ in range(steps):
            if data.draw(st.integers(0, 9)) == 0:
                reopened = [n for n in names if model[n] is S.SUCCEEDED]
                assert ledger.refresh(names) == len(reopened)
                model.update(dict.fromkeys(reopened, S.PENDING))
                continue
            custom_id = data.draw(st.sampled_from(names))
            from_ = data.draw(st.sampled_from([model[custom_id], *S]))
            to = data.draw(st.sampled_from(list(S)))
            if (from_, to) not in REQUEST_MOVES:
                with pytest.raises(LedgerError):
                    ledger.transition([custom_id], from_, to)
            else:
                moved = ledger.transition([custom_id], from_, to)
                assert moved == (1 if model[custom_id] is from_ else 0)
                if moved:
                    model[custom_id] = to
                assert ledger.transition([custom_id], from_, to) == 0  # replay: no move
            assert ledger.statuses(names) == model

    check()
