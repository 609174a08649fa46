"""Chaos: many seeded crash trials of ``groqbatch run`` against ``groqbatch serve``.

    .venv/bin/python bench/chaos.py                         # 50 trials, seed 1
    .venv/bin/python bench/chaos.py --trials 200 --seed 7 --rows 200

Each trial is a fresh job (``--rows`` requests in shards of ``--shard-lines``) killed one to
three times — at a named crash point of :mod:`pipeline.faultpoints` (``GROQBATCH_CRASH_AT``,
with a random n) or with SIGKILL after a random delay — then run to completion, then audited
against the server (:mod:`tests.e2e.crash`): every request answered once, one batch per shard,
no orphan upload, empty quarantine, tokens counted once, and no request ``failed`` without an
answer or an error (``unanswered``: failed with no result, or recovered from a kill or given up
on with no HTTP status). One line per trial, then

    trials=50 lost=0 duplicated=0 orphans=0 double_batches=0 unanswered=0 failed_trials=0

and exit status 1 if any trial failed or any count is not 0. The same seed replays the same
kills (the timing of a wall-clock kill still depends on the machine).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.cli import ServeProcess
from tests.e2e.crash import SERVE_ARGS, random_kills, run_trial


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--shard-lines", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="Keep the trials' folders (printed).")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    shards = -(-args.rows // args.shard_lines)
    totals = {"lost": 0, "duplicated": 0, "orphans": 0, "double_batches": 0, "unanswered": 0}
    failed = 0
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="groqbatch-chaos-"))
    serve = ServeProcess(*SERVE_ARGS, log=root / "serve.log")
    serve.wait_ready()
    try:
        for number in range(args.trials):
            kills = random_kills(rng, shards=shards)
            job = f"chaos-{args.seed}-{number}"
            try:
                trial = run_trial(root, job, kills, serve.url, serve.api_key, rows=args.rows,
                                  shard_lines=args.shard_lines)
            except Exception as exc:  # a run that errors is a failed trial, not the end of the bench
                failed += 1
                print(f"{job}: [{', '.join(map(str, kills))}] ERROR {type(exc).__name__}: {exc}")
                traceback.print_exc(limit=2, file=sys.stderr)
                continue
            print(trial.line(), flush=True)
            for name in totals:
                totals[name] += getattr(trial.audit, name)
            failed += not trial.audit.ok
    finally:
        serve.stop()
    elapsed = time.monotonic() - started
    print(f"trials={args.trials} lost={totals['lost']} duplicated={totals['duplicated']} "
          f"orphans={totals['orphans']} double_batches={totals['double_batches']} "
          f"unanswered={totals['unanswered']} failed_trials={failed} ({elapsed:.0f}s, seed {args.seed})")
    if args.keep:
        print(f"trials kept in {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed or any(totals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
