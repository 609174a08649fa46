"""Flex: finish what the batch path left undone with synchronous chat completions.

Leftovers — lines of expired, failed or cancelled batches, retryable error lines, missing
lines, requests of a ``mode = "sync"`` job, and everything still open at the deadline — are
sent as chat completions with ``service_tier = "flex"`` (or ``auto``/``on_demand``), the body
exactly as compiled. A continuous pipeline keeps ``concurrency`` calls in flight::

    producer ──(retryable → in_flight, a group per transaction)──▶ workers ──▶ recorder
       ▲                                                                          │
       └───────────── retryable again, due after a jittered backoff ◀────────────┘

- **Crash-safety and workers.** A request is claimed — ``retryable → in_flight`` with this
  worker's id and a lease (:mod:`state.claims`) — before its call, and answered after; every
  call is one such move, so the ledger counts attempts exactly, whichever worker made them. Only
  the ids the claim returned are sent: two workers never send the same request. In-flight
  requests whose lease ran out (their worker was killed mid-call) go back to ``retryable`` when
  the stage starts, with the interrupted attempt given back — it got neither an answer nor an
  error; another worker's live claims are never touched. Results are written by
  :meth:`~state.Ledger.record_results` (first answer wins, and only by the claim's owner), a
  chunk per transaction, so a result is never recorded twice.
- **Backoff.** 429, 498 (flex at capacity: the SDKs do not retry it, we do), 5xx and transport
  errors put the request back as retryable, due after ``RetryPolicy``'s jittered exponential
  backoff — or, on a 429, after the server's ``retry-after``, which also pauses every worker
  at once (a call already queued waits too). A 429 is the server's pacing, not a failed try:
  it does not count against ``max_attempts``. Other 4xx are permanent failures of that
  request, recorded with their body — except 401/403, which are about the key, not the request:
  nothing more is sent, what was claimed goes back to retryable, and the stage raises the
  :class:`AuthenticationError`. A request whose ``max_attempts`` are spent fails with its last
  error. When the first ``HALT_AFTER`` permanent errors are the same one and nothing has been
  answered, the cause is the job's, not the requests': the stage stops sending, the requests it
  claimed but did not send go back to retryable (their attempt given back), and
  ``FlexReport.halted`` names the error once. They stay retryable rather than failed because
  nothing was asked for them: once the cause is fixed (the model enabled, a typo corrected), a
  run sends them; until then each run spends at most ``HALT_AFTER`` calls finding out.
- **Pace.** An anyio ``CapacityLimiter`` bounds concurrency; a :class:`~pipeline.pacing.Pacer`
  spaces calls as Groq's limits say: the tokens headers (the minute's window) keep the tokens
  per minute under the limit, the requests-per-minute limit is found from 429s (AIMD), and a
  429's ``retry-after`` pauses every call. When the requests headers (the day's budget) fall
  to ``concurrency`` or fewer, or a 429 names a daily limit, the stage stops for today: no
  more calls, what was claimed goes back unsent, everything left stays retryable, and the
  report says when the limit is full again (``daily_limit``).
- **Budget.** Before each call the job-wide budget (``[policy.budget]``: requests, tokens,
  dollars, counting what the batches spent) is checked with the call's estimated cost; once it
  would be exceeded the stage stops cleanly and the rest stays retryable. With a budget set,
  what the ledger has recorded (every worker's calls) is read again before each group is
  claimed, so workers sharing a job share its budget.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import orjson
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream

from jobs import JobSpec, Price
from jobs.answers import judge_answer
from jobs.audio import MIN_BILLED_AUDIO_S, billed_audio_seconds, is_audio
from jobs.budget import Spend, spent
from jobs.compile import SYNC_MODE_REASON, estimate_completion_tokens, estimate_prompt_tokens
from jobs.outputs import (
    OutputValidator,
    invalid_output_error,
    is_invalid_output,
    json_validate_failed,
)
from state import Ledger, OpenRequest, RequestStatus, ResultRecord, ResultSource, ShardStep
from state.spend import ExtraSpend

from .client import ChatReply, GroqClient
from .deadline import DROPPED_REASON
from .errors import (
    APIError,
    AuthenticationError,
    PermanentAPIError,
    RateLimitedError,
    RetryableAPIError,
    ServerUnavailableError,
    TransportError,
)
from .pacing import Pacer
from .reconcile import MISSING
from .retry import NO_RETRY, RetryPolicy
from .workers import Worker

log = logging.getLogger("groqbatch.flex")

CLAIM_GROUP = 64
"""Most requests moved retryable → in_flight in one transaction (a transaction costs ~2 ms on a
busy machine: one per call would take a third of the loop at a few hundred calls a second).
A stage claims ``2 x concurrency`` at a time within it, so workers sharing a job share evenly."""
RECORD_EVERY = 256
"""Most outcomes written in one transaction."""
FREE_TRANSPORT_FAILURES = 8
"""Calls of one request that got no answer at all (connect error, timeout, dropped connection)
and do not count against ``max_attempts``: a dead server stops the run through the client's
``give_up_after_s`` instead of failing every request in seconds; past this many, a request whose
calls always break off does count them."""
RECORD_WAIT_S = 0.05
"""How long the recorder lets outcomes gather before writing them (bounds commits to ~20/s)."""
FLEX_PREFIX = "flex: "
HALT_AFTER = 5
"""Identical permanent errors (same status and error body) after which a stage that has had no
answer at all stops sending: a job-wide cause (a model that does not exist, an endpoint the
account may not use) would fail every request the same way, and each call is spent."""


def trigger_of(last_error: str | None) -> str:
    """Which ``[policy.fallback].triggers`` entry a retryable request falls under."""
    text = last_error or ""
    if is_invalid_output(text):
        return "invalid_output"
    if text.startswith((FLEX_PREFIX, SYNC_MODE_REASON)):
        return "already_in_fallback"
    if '"batch_expired"' in text:
        return "expired"
    if '"batch_cancelled"' in text:
        return "cancelled"
    if text.startswith(MISSING):
        return "missing"
    if text.startswith(DROPPED_REASON):
        return "deadline"
    if "failed validation" in text:
        return "failed"
    return "retryable_errors"


def eligible(last_error: str | None, triggers: frozenset[str]) -> bool:
    trigger = trigger_of(last_error)
    # An invalid output is retryable only because [policy] retry_invalid_output says so; that
    # knob (checked in _Stage._next_call) is its trigger.
    return (trigger in ("already_in_fallback", "invalid_output") or trigger in triggers
            or "deadline_passed" in triggers)


@dataclass(slots=True)
class FlexReport:
    tier: str = "flex"
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    requeued: int = 0
    gave_up: int = 0
    recovered_in_flight: int = 0
    invalid_output: int = 0
    """Answers that did not parse or fit the output schema (also counted failed or requeued)."""
    status_counts: dict[str, int] = field(default_factory=dict)
    """HTTP status (or ``transport``) → count, for 429/498/5xx seen."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    budget_exhausted: str | None = None
    """Which budget stopped the stage, if one did."""
    daily_limit: dict[str, Any] | None = None
    """A daily rate limit that stopped the stage for today: ``{"limit", "resets_at", "left"}``."""
    elapsed_s: float = 0.0
    halted: str | None = None
    """The permanent error every call got, when the stage stopped sending because of it."""
    unsent: int = 0
    """Requests claimed, then given back unsent because the stage halted."""

    def add(self, other: FlexReport) -> None:
        """Fold one round's report into a run's."""
        for name in ("sent", "succeeded", "failed", "requeued", "gave_up", "recovered_in_flight",
                     "invalid_output", "prompt_tokens", "completion_tokens", "cost_usd",
                     "elapsed_s", "unsent"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, count in other.status_counts.items():
            self.status_counts[key] = self.status_counts.get(key, 0) + count
        self.budget_exhausted = other.budget_exhausted or self.budget_exhausted
        self.daily_limit = other.daily_limit or self.daily_limit
        self.halted = other.halted or self.halted

    @property
    def pace_rps(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__} | {"pace_rps": round(self.pace_rps, 2)}


@dataclass(slots=True)
class Budget:
    """The job-wide caps, with what was spent before this stage started."""

    max_requests: int | None
    max_tokens: int | None
    max_dollars: float | None
    requests: int
    tokens: int
    dollars: float

    @property
    def capped(self) -> bool:
        return (self.max_requests is not None or self.max_tokens is not None
                or self.max_dollars is not None)

    def sync(self, spend: Spend, *, in_flight_tokens: int = 0,
             in_flight_usd: float = 0.0) -> None:
        """Take what the ledger has recorded as spent (every worker's calls: an in-flight call
        counted its attempt when claimed) and committed to batches on their way (their
        estimate, :mod:`jobs.budget`), plus the estimates of this stage's calls whose tokens
        are not recorded yet."""
        self.requests = spend.requests
        self.tokens = int(spend.tokens) + in_flight_tokens
        self.dollars = spend.dollars + in_flight_usd

    def refuses(self, tokens: int, dollars: float) -> str | None:
        """The name of the cap that one more call of this size would break, if any."""
        if self.max_requests is not None and self.requests + 1 > self.max_requests:
            return "max_requests"
        if self.max_tokens is not None and self.tokens + tokens > self.max_tokens:
            return "max_tokens"
        if self.max_dollars is not None and self.dollars + dollars > self.max_dollars:
            return "max_dollars"
        return None


@dataclass(slots=True)
class _Call:
    custom_id: str
    body: dict[str, Any]
    attempts: int
    estimate_tokens: int
    estimate_usd: float


@dataclass(slots=True)
class _Outcome:
    call: _Call
    result: ResultRecord | None = None
    error: APIError | None = None
    unsent: bool = False
    """Claimed but not sent: the stage stopped for today first."""


RECOVERED = FLEX_PREFIX + "recovered after an interrupted run"


async def finish_leftovers(ledger: Ledger, client: GroqClient, spec: JobSpec, price: Price | None, *,
                           deadline_passed: bool = False,
                           retry: RetryPolicy | None = None,
                           worker: Worker | None = None,
                           keep: Callable[[OpenRequest], bool] | None = None,
                           on_record: Callable[[FlexReport], None] | None = None) -> FlexReport:
    """Send the job's eligible retryable requests through the synchronous path until none is
    left (or the budget stops it). Requests not eligible under the job's triggers stay put, and
    so do those ``keep`` names (leftovers to be re-batched, :mod:`pipeline.leftovers`).
    ``on_record`` is called with the stage's report so far after each chunk of outcomes is
    recorded (the progress display)."""
    fallback = spec.policy.fallback
    report = FlexReport(tier=tier_for(spec))
    if not fallback.enabled:
        return report
    worker = worker or Worker.make()
    started = time.monotonic()
    report.recovered_in_flight = ledger.recover_expired_requests(spec.name, RECOVERED)
    triggers = frozenset(fallback.triggers) | ({"deadline_passed"} if deadline_passed else set())
    budget = Budget(spec.policy.budget.max_requests, spec.policy.budget.max_tokens,
                    spec.policy.budget.max_dollars, 0, 0, 0.0)
    if budget.capped:
        budget.sync(spent(ledger, spec.name, estimate_completion_tokens(spec), price))
    # A request of a dropped shard never went through a batch: it spent no attempt there.
    dropped = frozenset(s["key"] for s in ledger.shards(spec.name) if s["step"] == ShardStep.DROPPED)
    stage = _Stage(ledger, client, spec, price, report, budget, triggers, retry or RetryPolicy(),
                   dropped, worker)
    stage.keep = keep
    stage.on_record = on_record
    stage.started = started
    await stage.run()
    report.elapsed_s = round(time.monotonic() - started, 3)
    if (stopped := stage.pacer.stopped) is not None:
        report.daily_limit = stopped.as_dict()
    if stage.refused is not None:
        raise stage.refused
    return report


def tier_for(spec: JobSpec) -> str:
    """The tier the fallback asks for: ``[policy.fallback].service_tier`` for chat; on-demand
    for audio, whose endpoints take no ``service_tier`` (groq-docs "Flex Processing": the
    parameter is one of chat completion requests; the OpenAPI transcription and translation
    bodies allow no other field)."""
    return "on_demand" if is_audio(spec.endpoint) else spec.policy.fallback.service_tier


class _Stage:
    def __init__(self, ledger: Ledger, client: GroqClient, spec: JobSpec, price: Price | None,
                 report: FlexReport, budget: Budget, triggers: frozenset[str], retry: RetryPolicy,
                 dropped_shards: frozenset[str], worker: Worker | None = None) -> None:
        self.ledger, self.client, self.spec, self.price = ledger, client, spec, price
        self.worker = worker or Worker.make()
        self.pending_estimate: dict[str, tuple[int, float]] = {}
        """custom_id → (tokens, USD) estimated for a call sent whose outcome is not recorded."""
        self.report, self.budget, self.triggers, self.retry = report, budget, triggers, retry
        self.dropped_shards = dropped_shards
        self.tier = tier_for(spec)
        self.endpoint = spec.endpoint
        self.max_attempts = spec.policy.fallback.max_attempts
        self.outputs = OutputValidator.for_job(spec)
        self.invalid_retries = spec.policy.retry_invalid_output
        self.concurrency = spec.policy.fallback.concurrency
        self.completion_estimate = estimate_completion_tokens(spec)
        self.pacer = Pacer(tokens_per_call=self.completion_estimate, low_water=self.concurrency,
                           daily_reserve=self.concurrency)
        self.due: dict[str, float] = {}
        """custom_id → monotonic time before which a requeued request is not sent again."""
        self.rate_limited: dict[str, int] = {}
        """custom_id → 429s (and free transport failures) it got in this stage: attempts that do
        not count against the limit."""
        self.unanswered: dict[str, int] = {}
        """custom_id → calls of this stage that got no answer at all (transport failures)."""
        self.in_flight = 0
        """Calls moved to in_flight whose outcome is not yet recorded in the ledger."""
        self.keep: Callable[[OpenRequest], bool] | None = None
        """Retryable requests to leave alone (leftovers the next round re-batches)."""
        self.on_record: Callable[[FlexReport], None] | None = None
        self.started = time.monotonic()
        self.probe = anyio.Semaphore(HALT_AFTER)
        self.answered = False
        """A call of this stage got a 200: the job's requests can be answered."""
        self.permanent: dict[str, int] = {}
        """Permanent error (status and body) → calls that got it, while nothing is answered."""
        self.refused: AuthenticationError | ServerUnavailableError | None = None
        """A 401/403 (the key is wrong or not allowed), or a server that stopped answering. Not
        the request's fault — nothing more is sent, what was claimed goes back to retryable, and
        the stage raises it at the end."""

    async def run(self) -> None:
        send_calls, receive_calls = anyio.create_memory_object_stream[_Call](self.concurrency)
        send_done, receive_done = anyio.create_memory_object_stream[_Outcome](
            max(self.concurrency * 4, RECORD_EVERY))
        limiter = anyio.CapacityLimiter(self.concurrency)
        async with anyio.create_task_group() as group:
            group.start_soon(self._record, receive_done)
            async with send_done:
                for _ in range(self.concurrency):
                    group.start_soon(self._work, receive_calls.clone(), send_done.clone(), limiter)
                receive_calls.close()
                await self._produce(send_calls)

    async def _produce(self, send: ObjectSendStream[_Call]) -> None:
        """Page through the job's retryable requests, again and again, until none is eligible,
        due later, or in flight. Calls are claimed (retryable → in_flight) a group at a time,
        one transaction per group, just before they are handed to the workers."""
        # Claim about what this worker can have in flight soon, no more: a claimed request
        # waits in this worker's queue where no other worker can take it, so large groups
        # leave the last workers of a shared job idle while one works through its backlog.
        group_size = min(CLAIM_GROUP, max(8, 2 * self.concurrency))
        async with send:
            while True:
                claimed = 0
                group: list[_Call] = []
                for request in self.ledger.iter_requests(self.spec.name, RequestStatus.RETRYABLE):
                    if (self.refused is not None or self.pacer.stopped is not None
                            or self.report.halted is not None):
                        break
                    call = self._next_call(request)
                    if call is None:
                        continue
                    if not group and self.budget.capped:
                        self._sync_budget()
                    refused = self.budget.refuses(call.estimate_tokens, call.estimate_usd)
                    if refused is not None:
                        self.report.budget_exhausted = refused
                        await self._dispatch(group, send)
                        return
                    self.budget.requests += 1
                    self.budget.tokens += call.estimate_tokens
                    self.budget.dollars += call.estimate_usd
                    group.append(call)
                    if len(group) >= group_size:
                        claimed += await self._dispatch(group, send)
                        group = []
                if self.refused is not None or self.report.halted is not None:
                    await self._release(group)
                    return
                if self.pacer.stopped is not None:
                    await self._dispatch(group, send)  # the workers give them back unsent
                    return
                claimed += await self._dispatch(group, send)
                if claimed:
                    continue
                if self.in_flight == 0 and not self._waiting():
                    return
                await anyio.sleep(min(self._next_due_in(), 0.25) if self._waiting() else 0.02)

    def _next_call(self, request: OpenRequest) -> _Call | None:
        """The call to make for a retryable request now, or None (not eligible, given up, or
        not due yet)."""
        custom_id = request.custom_id
        if not eligible(request.last_error, self.triggers):
            return None
        if self.keep is not None and self.keep(request):
            return None
        if is_invalid_output(request.last_error) and request.attempts > self.invalid_retries:
            self._give_up(custom_id, request.attempts, request.last_error)
            return None
        # A request that went through a batch spent one attempt there; 429s spent none.
        went_through_batch = request.shard_key is not None and request.shard_key not in self.dropped_shards
        limit = self.max_attempts + went_through_batch + self.rate_limited.get(custom_id, 0)
        if request.attempts >= limit:
            self._give_up(custom_id, request.attempts, request.last_error)
            return None
        if self.due.get(custom_id, 0.0) > time.monotonic():
            return None
        return self._call(custom_id, request.body, request.attempts)

    def _sync_budget(self) -> None:
        tokens = sum(tokens for tokens, _ in self.pending_estimate.values())
        usd = sum(usd for _, usd in self.pending_estimate.values())
        self.budget.sync(spent(self.ledger, self.spec.name, self.completion_estimate, self.price),
                         in_flight_tokens=tokens, in_flight_usd=usd)

    async def _dispatch(self, group: list[_Call], send: ObjectSendStream[_Call]) -> int:
        """Claim a group of calls in one transaction, then queue for the workers only those
        this worker got (another worker may have claimed some meanwhile)."""
        if not group:
            return 0
        ids = [call.custom_id for call in group]
        got = set(self.ledger.claim_requests(ids, self.worker.id, lease_s=self.worker.lease_s,
                                             tier=self.tier))
        if len(got) != len(group):
            log.info("flex: %d of %d requests were claimed by another worker",
                     len(group) - len(got), len(group))
            for call in group:
                if call.custom_id not in got:
                    self.budget.requests -= 1
                    self._refund(call)
            group = [call for call in group if call.custom_id in got]
        for call in group:
            self.pending_estimate[call.custom_id] = (call.estimate_tokens, call.estimate_usd)
        self.in_flight += len(group)
        for call in group:
            await send.send(call)
        return len(group)

    def _waiting(self) -> bool:
        now = time.monotonic()
        return any(when > now for when in self.due.values())

    def _next_due_in(self) -> float:
        now = time.monotonic()
        return max(0.0, min((w for w in self.due.values() if w > now), default=now) - now)

    def _call(self, custom_id: str, body: bytes, attempts: int) -> _Call:
        if is_audio(self.endpoint):  # no tokens: billed by the audio's length, at least 10 s
            usd = self.price.audio_cost(MIN_BILLED_AUDIO_S, self.tier) if self.price else 0.0
            return _Call(custom_id, orjson.loads(body), attempts, 0, usd)
        prompt = estimate_prompt_tokens(body)
        usd = self.price.cost(prompt, self.completion_estimate, "flex") if self.price else 0.0
        return _Call(custom_id, orjson.loads(body), attempts, prompt + self.completion_estimate, usd)

    def _refund(self, call: _Call) -> None:
        self.budget.tokens -= call.estimate_tokens
        self.budget.dollars -= call.estimate_usd

    def _give_up(self, custom_id: str, attempts: int, last_error: str | None) -> None:
        moved = self.ledger.transition(
            [custom_id], RequestStatus.RETRYABLE, RequestStatus.FAILED,
            last_error=f"{last_error} (gave up after {attempts} attempts)")
        self.report.gave_up += moved
        self.due.pop(custom_id, None)

    async def _work(self, receive: ObjectReceiveStream[_Call], send: ObjectSendStream[_Outcome],
                    limiter: anyio.CapacityLimiter) -> None:
        async with receive, send:
            async for call in receive:
                if self.refused is not None:  # claimed before the refusal: back, unsent
                    await send.send(_Outcome(call, error=self.refused))
                    continue
                if self.report.halted is not None:  # claimed before the halt: back, unsent
                    await self._give_back(call)
                    continue
                async with limiter:
                    # Here, not in the producer: queued calls wait too.
                    async with self.pacer.turn() as sent_at:
                        if self.pacer.stopped is not None:  # stopped for today: back, unsent
                            outcome = _Outcome(call, unsent=True)
                        elif self.answered:
                            outcome = await self._attempt(call, sent_at)
                        else:
                            # Until a call is answered, at most HALT_AFTER are out at once: a
                            # job whose every call fails the same way spends little finding out.
                            async with self.probe:
                                if self._halted():  # while this call waited for a probe slot
                                    await self._give_back(call)
                                    continue
                                outcome = await self._attempt(call, sent_at)
                    await send.send(outcome)

    async def _attempt(self, call: _Call, sent_at: float) -> _Outcome:
        try:
            if is_audio(self.endpoint):  # no service_tier: the audio endpoints do not take one
                reply = await self.client.transcribe(self.endpoint, call.body, retry=NO_RETRY)
            else:
                reply = await self.client.chat(call.body, service_tier=self.tier, retry=NO_RETRY)
        except (AuthenticationError, ServerUnavailableError) as exc:
            # The key, or a server gone for good — not the request: failing every request for
            # good would leave nothing to retry once it is fixed. Back to retryable, and the
            # stage stops.
            self.refused = self.refused or exc
            return _Outcome(call, error=exc)
        except PermanentAPIError as exc:
            result = self._failed(call, exc)
            self._watch_permanent(exc, result)
            return _Outcome(call, result=result)
        except APIError as exc:
            if isinstance(exc, RateLimitedError):
                # Now, not when the outcome is recorded: no other call goes out meanwhile.
                self.pacer.refused(exc, sent_at=sent_at, backoff_s=self._backoff_s(call.attempts, exc))
            return _Outcome(call, error=exc)
        result = self._succeeded(call, reply)
        self.pacer.observe(reply.rate_limits,
                           tokens_used=result.prompt_tokens + result.completion_tokens)
        self.answered = True
        return _Outcome(call, result=result)

    def _watch_permanent(self, exc: PermanentAPIError, result: ResultRecord) -> None:
        """Halt the stage once ``HALT_AFTER`` calls got the same permanent error and none got
        an answer (see the module docstring)."""
        if self.answered or result.outcome is not RequestStatus.FAILED:
            return
        key = f"{exc.status_code} {result.error}"
        self.permanent[key] = seen = self.permanent.get(key, 0) + 1
        if seen >= HALT_AFTER and self.report.halted is None:
            from .failures import short_reason

            self.report.halted = f"{exc.status_code} {short_reason(result.error)}"
            log.warning("flex: stopped sending: %d calls got the same permanent error (%s) and "
                        "none was answered", seen, self.report.halted)

    def _halted(self) -> bool:
        return self.report.halted is not None

    def _halt_reason(self) -> str:
        return (f"{FLEX_PREFIX}not sent: the fallback stopped after {HALT_AFTER} calls got the "
                f"same permanent error ({self.report.halted})")

    async def _release(self, group: list[_Call]) -> None:
        """Calls built but not claimed: nothing to give back but their budget."""
        for call in group:
            self.budget.requests -= 1
            self._refund(call)

    async def _give_back(self, call: _Call) -> None:
        """A claimed call not sent (the stage halted): retryable again, attempt given back."""
        await anyio.to_thread.run_sync(partial(
            self.ledger.release_requests, [call.custom_id], self.worker.id, self._halt_reason()))
        self.budget.requests -= 1
        self._refund(call)
        self.pending_estimate.pop(call.custom_id, None)
        self.in_flight -= 1
        self.report.unsent += 1

    def _succeeded(self, call: _Call, reply: ChatReply) -> ResultRecord:
        """A 200 reply: succeeded with its parsed output; or (not parsing or not fitting the
        output schema) an invalid output — paid for all the same (see :mod:`jobs.outputs`); or,
        when the body is not an answer at all (:mod:`jobs.answers`), retryable, asked again
        after a backoff, the body kept with the reason."""
        body, problem = judge_answer(reply.body, self.endpoint)
        usage: Any = body.get("usage") if isinstance(body, Mapping) else None
        usage = usage if isinstance(usage, Mapping) else {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        cost = self.price.cost(prompt, completion, "flex") if self.price else 0.0
        if self.price and is_audio(self.endpoint):  # billed by the audio's length
            cost += self.price.audio_cost(billed_audio_seconds(body), self.tier)
        if problem is not None:
            self.due[call.custom_id] = time.monotonic() + random.uniform(
                0, min(self.retry.max_backoff_s, self.retry.initial_backoff_s * 2 ** call.attempts))
            return ResultRecord(call.custom_id, RequestStatus.RETRYABLE, ResultSource.FLEX,
                                status_code=200, body=orjson.dumps(body),
                                error=FLEX_PREFIX + problem, prompt_tokens=prompt,
                                completion_tokens=completion, cost_usd=cost)
        outcome, parsed, error = RequestStatus.SUCCEEDED, None, None
        if self.outputs is not None:
            verdict = self.outputs.judge(body)
            parsed, error = verdict.parsed, verdict.invalid
            if error is not None:
                outcome = self.outputs.invalid_outcome
        return ResultRecord(call.custom_id, outcome, ResultSource.FLEX, status_code=200,
                            body=orjson.dumps(body), error=error, parsed=parsed,
                            prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost)

    def _failed(self, call: _Call, exc: PermanentAPIError) -> ResultRecord:
        body = exc.body if exc.body is not None else {"error": {"message": exc.message}}
        reason = json_validate_failed(body)
        if reason is not None:  # Groq's constrained decoding gave up: an invalid output
            outcome = self.outputs.invalid_outcome if self.outputs else RequestStatus.FAILED
            return ResultRecord(call.custom_id, outcome, ResultSource.FLEX,
                                status_code=exc.status_code, body=orjson.dumps(body),
                                error=invalid_output_error(reason))
        inner = body.get("error") if isinstance(body, dict) else body
        return ResultRecord(call.custom_id, RequestStatus.FAILED, ResultSource.FLEX,
                            status_code=exc.status_code, body=orjson.dumps(body),
                            error=orjson.dumps(inner).decode())

    async def _record(self, receive: MemoryObjectReceiveStream[_Outcome]) -> None:
        """Write outcomes in chunks: what arrives within ``RECORD_WAIT_S`` of the first, and
        while the last chunk was being written.

        The ledger write runs on a worker thread, so calls go on meanwhile; a request counts as
        in flight until its outcome is in the ledger, so the producer never ends early. (No
        timeout around ``receive()``: an item handed over as the timeout fires would be lost.)"""
        async with receive:
            async for first in receive:
                outcomes = [first]
                if self.in_flight > 1:
                    await anyio.sleep(RECORD_WAIT_S)
                while len(outcomes) < RECORD_EVERY:
                    try:
                        outcomes.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                records = [self._settle(outcome) for outcome in outcomes]
                await anyio.to_thread.run_sync(self._store, records)
                for outcome in outcomes:
                    self.pending_estimate.pop(outcome.call.custom_id, None)
                self.in_flight -= len(outcomes)
                if self.on_record is not None:
                    self.report.elapsed_s = round(time.monotonic() - self.started, 3)
                    self.on_record(self.report)

    def _store(self, records: list[ResultRecord]) -> None:
        """Write outcomes (one transaction); an answer no request took — its call was given
        up after this worker's claim ran out, and another answered — was paid all the same:
        it is recorded as spent twice, for the budget."""
        _, taken = self.ledger.record_result_chunk(records, worker=self.worker.id)
        self.ledger.record_extra_spend(
            ExtraSpend(self.spec.name, r.custom_id, ResultSource.FLEX.value, None,
                       r.prompt_tokens, r.completion_tokens, r.cost_usd)
            for r in records
            if r.custom_id not in taken and (r.prompt_tokens or r.completion_tokens))

    def _settle(self, outcome: _Outcome) -> ResultRecord:
        if outcome.unsent:
            self._refund(outcome.call)
            return ResultRecord(outcome.call.custom_id, RequestStatus.RETRYABLE, ResultSource.FLEX,
                                error=FLEX_PREFIX + "not sent: stopped for today (daily rate limit)")
        self.report.sent += 1
        if outcome.result is not None:
            self._count(outcome.result)
            return outcome.result
        assert outcome.error is not None
        return self._requeue(outcome.call, outcome.error)

    def _count(self, result: ResultRecord) -> None:
        report = self.report
        # Paid for whatever came of it (an invalid output too).
        report.prompt_tokens += result.prompt_tokens
        report.completion_tokens += result.completion_tokens
        report.cost_usd += result.cost_usd
        if result.outcome is RequestStatus.SUCCEEDED:
            report.succeeded += 1
            return
        if result.outcome is RequestStatus.RETRYABLE:  # an invalid output, to be asked again
            report.requeued += 1
        else:
            report.failed += 1
        report.invalid_output += is_invalid_output(result.error)
        if result.status_code != 200:
            key = str(result.status_code)
            report.status_counts[key] = report.status_counts.get(key, 0) + 1

    def _requeue(self, call: _Call, error: APIError) -> ResultRecord:
        """A retryable failure: back to retryable, due after the backoff (or retry-after)."""
        report = self.report
        report.requeued += 1
        key = str(error.status_code) if error.status_code is not None else "transport"
        report.status_counts[key] = report.status_counts.get(key, 0) + 1
        if isinstance(error, RateLimitedError) or (
            isinstance(error, TransportError)
            and self.unanswered.get(call.custom_id, 0) < FREE_TRANSPORT_FAILURES
        ):
            # The server's pace, or no answer at all (a server down is the client's
            # give-up clock's business, not this request's): not a failed try.
            if isinstance(error, TransportError):
                self.unanswered[call.custom_id] = self.unanswered.get(call.custom_id, 0) + 1
            self.rate_limited[call.custom_id] = self.rate_limited.get(call.custom_id, 0) + 1
        self.due[call.custom_id] = time.monotonic() + self._backoff_s(call.attempts, error)
        self._refund(call)  # a refused call costs nothing
        return ResultRecord(call.custom_id, RequestStatus.RETRYABLE, ResultSource.FLEX,
                            status_code=error.status_code, error=FLEX_PREFIX + _error_text(error))

    def _backoff_s(self, attempts: int, error: APIError) -> float:
        retry_after = error.retry_after_s if isinstance(error, RetryableAPIError) else None
        if retry_after is not None and 0 <= retry_after <= self.retry.max_retry_after_s:
            return retry_after
        cap = min(self.retry.max_backoff_s, self.retry.initial_backoff_s * 2 ** max(attempts - 1, 0))
        return random.uniform(0, cap)  # full jitter, as tenacity's wait_random_exponential


def _error_text(error: APIError) -> str:
    """A retryable error as kept in ``last_error``: the status and the server's error object
    whole (``{"message", "type", "code"}``), else our message (a transport failure)."""
    body = error.body.get("error") if isinstance(error.body, dict) else None
    detail: Any = body if isinstance(body, dict) else {"code": error.code, "message": error.message}
    return orjson.dumps({"status": error.status_code, "error": detail}).decode()
