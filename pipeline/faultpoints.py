"""Named crash points, for the crash tests: inert unless ``GROQBATCH_CRASH_AT`` names one.

The crash-exact promise (DESIGN.md) is about the narrow windows between a remote side effect
and the ledger write that records it. A ``kill -9`` at a random moment rarely lands in one, so
the pipeline calls :func:`crash_point` at each of them, and a test run sets

    GROQBATCH_CRASH_AT=after_create:3 groqbatch run job.toml

to have the process ``SIGKILL`` itself at the third time it passes ``after_create`` — exactly
as if the operator's ``kill -9`` had arrived there. ``:N`` defaults to 1 (the first hit);
hits are counted per process. Unset (production), each call is one environment lookup.

The points, in the order a shard passes them:

==================  ======================================================================
``after_upload``    the shard file is on the server; its ``file_id`` is not yet recorded
``after_create``    the batch exists on the server; its ``batch_id`` is not yet recorded
``after_submit``    the shard is recorded ``submitted`` (between two shards' submissions)
``after_settle``    poll recorded the shard ``settled``; nothing of its files read yet
``mid_reconcile``   a chunk of result lines is committed; the shard is not yet ``reconciled``
``after_reconcile`` the shard is recorded ``reconciled`` (between two shards' reconciles)
``after_rebatch``   a batch's leftovers are back to pending; no new shard holds them yet
==================  ======================================================================

SIGKILL, not an exception: nothing runs after it — no ``finally``, no ``__exit__``, no
buffered write — which is the point. (A ``sys.settrace`` hook could reach any line without
touching the pipeline, but it slows every line of the process, breaks when code moves, and
names windows by line number; a named call at each window documents the window where it is.)
"""

from __future__ import annotations

import os
import signal
import threading

ENV_VAR = "GROQBATCH_CRASH_AT"
POINTS = frozenset(
    {"after_upload", "after_create", "after_submit", "after_settle", "mid_reconcile",
     "after_reconcile", "after_rebatch"}
)

_hits: dict[str, int] = {}
_lock = threading.Lock()  # reconcile calls from a worker thread


def crash_point(name: str) -> None:
    """``SIGKILL`` this process if ``$GROQBATCH_CRASH_AT`` is ``name`` (or ``name:N`` and this
    is the N-th time ``name`` is reached in this process); otherwise do nothing."""
    wanted = os.environ.get(ENV_VAR)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    with _lock:
        _hits[name] = hit = _hits.get(name, 0) + 1
    if hit == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)
