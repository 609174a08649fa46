"""End to end: ``groqbatch run`` beside the bare SDK script (``bench/bare_sdk.py``), same job,
same kind of server, interleaved rounds.

    .venv/bin/python bench/e2e.py                          # 100,000 rows, 3 rounds
    .venv/bin/python bench/e2e.py --rows 1000000 --rounds 1
    .venv/bin/python bench/e2e.py --rows 500 --rounds 1 --time-scale 20 --poll-s 0.1   # smoke run

Each measurement gets a fresh ``groqbatch serve`` (``--throughput`` lines per real second; its
clock at real time unless ``--time-scale``) in its own process, and runs one tool in a child process, timed from spawn to exit;
its CPU time (user + system) and peak RSS come from ``os.wait4``:

* **bare**: ``bench/bare_sdk.py`` on the official ``openai`` SDK: split into 50,000-line files,
  upload, create, poll every ``--poll-s``, download, parse into a dict;
* **groqbatch**: ``groqbatch run --json`` on a job config for the same rows (same model, body
  and shard size, the same poll interval), into a fresh SQLite ledger.

The outcome is checked, not assumed, before any figure is printed: the bare script must
report every row answered; groqbatch's summary must count every request succeeded and its
ledger must hold an answer for every row; and the server's own batches must hold every
``custom_id`` exactly once, with no chat calls (nothing went through the fallback). A
measurement whose work was not done stops the bench with exit 1 and the reason.

Prints each measurement, then the medians and the ratios groqbatch / bare, and whether the
targets are met: wall ≤ 1.2x, client CPU ≤ 2x (issue 12). Targets are printed, not enforced:
the machines are shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from state import Ledger  # noqa: E402
from tests.e2e.cli import ServeProcess, clean_env, groqbatch_command  # noqa: E402
from tests.e2e.workers import batch_lines, journal  # noqa: E402

MODEL = "llama-3.1-8b-instant"
LINES_PER_FILE = 50_000
TARGET_WALL = 1.2
TARGET_CPU = 2.0


class NotDone(Exception):
    """The measured tool did not do the work: no figure is printed for it."""


@dataclass(frozen=True, slots=True)
class Measurement:
    tool: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


def generate(path: Path, rows: int) -> None:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "quietly", "hex", "jam"]
    with path.open("wb", buffering=1 << 20) as out:
        for i in range(rows):
            text = " ".join(words[(i * 7 + k) % len(words)] for k in range(12 + i % 11))
            out.write(orjson.dumps({"id": f"r{i:08d}", "text": f"{text} #{i}"}) + b"\n")


def write_config(folder: Path, rows_path: Path, base_url: str, poll_s: float) -> Path:
    config = folder / "job.toml"
    config.write_text(
        f'name = "e2e"\nbackend = "local"\nbase_url = "{base_url}"\nmodel = "{MODEL}"\n'
        f'workdir = "{folder / "work"}"\nledger = "{folder / "ledger.sqlite"}"\n'
        f'[input]\npath = "{rows_path}"\nid_column = "id"\n'
        '[prompt]\nuser = "{{ text }}"\nmax_completion_tokens = 16\n'
        f"[policy]\nmax_lines_per_shard = {LINES_PER_FILE}\n"
        f"poll_interval_min_s = {poll_s}\npoll_interval_max_s = {poll_s}\n"
    )
    return config


def timed(command: list[str], *, env: dict[str, str], cwd: Path, log: Path,
          timeout_s: float) -> tuple[int, float, float, float]:
    """Run ``command``; (exit code, wall s, CPU s, peak RSS MB) of that child alone."""
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, env=env, cwd=cwd)
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                raise NotDone(f"{command[1]} did not finish in {timeout_s:.0f}s")
            time.sleep(0.01)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    if proc.returncode != 0:
        raise NotDone(f"exit {proc.returncode}: {stderr.strip()[-800:]}")
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def last_json(log: Path) -> dict[str, Any]:
    """The JSON document a tool printed on stdout (``--json``: the whole output)."""
    text = log.read_bytes().strip()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            value = orjson.loads(text.splitlines()[-1])
        except (orjson.JSONDecodeError, IndexError) as exc:
            raise NotDone(f"no JSON summary on stdout: {text[:300]!r}") from exc
    if not isinstance(value, dict):
        raise NotDone(f"unexpected summary: {text[:300]!r}")
    return value


def check_server(base_url: str, rows: int) -> None:
    _per_shard, per_request = batch_lines(base_url)
    doubled = [cid for cid, n in per_request.items() if n > 1]
    chats = journal(base_url).chat_calls
    if len(per_request) != rows or doubled or chats:
        raise NotDone(f"server saw {len(per_request)} distinct custom_ids for {rows} rows, "
                      f"{len(doubled)} sent twice, {chats} chat calls")


def measure(tool: str, rows_path: Path, rows: int, folder: Path, args: argparse.Namespace) -> Measurement:
    folder.mkdir(parents=True)
    # --throughput is per emulated second: lines per real second = throughput x time scale.
    server = ServeProcess("--time-scale", str(args.time_scale),
                          "--throughput", str(args.throughput / args.time_scale),
                          log=folder / "serve.log")
    try:
        server.wait_ready()
        env = clean_env(GROQ_API_KEY=server.api_key)
        if tool == "bare":
            command = [sys.executable, str(ROOT / "bench" / "bare_sdk.py"), str(rows_path),
                       "--base-url", f"{server.url}/openai/v1", "--model", MODEL,
                       "--lines-per-file", str(LINES_PER_FILE), "--poll-s", str(args.poll_s)]
        else:
            config = write_config(folder, rows_path, server.url, args.poll_s)
            command = [*groqbatch_command(), "run", "--json", "--quiet", str(config)]
        log = folder / "out.json"
        _, wall, cpu, rss = timed(command, env=env, cwd=folder, log=log, timeout_s=args.timeout_s)
        output = last_json(log)
        if tool == "bare":
            if output["answered"] != rows:
                raise NotDone(f"bare script answered {output['answered']} of {rows}")
        else:
            check_groqbatch(output, folder, rows)
        check_server(server.url, rows)
    finally:
        server.stop()
    return Measurement(tool, wall, cpu, rss)


def check_groqbatch(summary: dict[str, Any], folder: Path, rows: int) -> None:
    counts = summary.get("requests") or {}
    if counts.get("succeeded") != rows:
        raise NotDone(f"groqbatch summary: {counts} for {rows} rows")
    if not (folder / "ledger.sqlite").exists():
        raise NotDone("groqbatch left no ledger to check")
    with Ledger.open(folder / "ledger.sqlite") as ledger:
        answered = ledger.request_counts("e2e").get("succeeded", 0)
    if answered != rows:
        raise NotDone(f"groqbatch ledger: {answered} answered of {rows}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--throughput", type=float, default=25_000,
                        help="batch lines the server answers per second")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="the server's emulated seconds per real second (its fixed 2 s of "
                             "validation and 2 s of finalizing per batch shrink with it)")
    parser.add_argument("--poll-s", type=float, default=0.5, help="both tools' poll interval")
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()
    results: dict[str, list[Measurement]] = {"bare": [], "groqbatch": []}
    with tempfile.TemporaryDirectory(prefix="groqbatch-e2e-") as tmp:
        root = Path(tmp)
        rows_path = root / "rows.jsonl"
        generate(rows_path, args.rows)
        print(f"{args.rows:,} rows, server {args.throughput:,.0f} lines/s"
              f" (time scale {args.time_scale:g}), poll {args.poll_s}s")
        try:
            for turn in range(args.rounds):
                for tool in ("bare", "groqbatch") if turn % 2 == 0 else ("groqbatch", "bare"):
                    m = measure(tool, rows_path, args.rows, root / f"{tool}-{turn}", args)
                    results[tool].append(m)
                    print(f"  round {turn + 1} {tool:9}: wall {m.wall_s:6.2f} s  cpu {m.cpu_s:6.2f} s"
                          f"  peak RSS {m.peak_rss_mb:5.0f} MB  (all {args.rows:,} answered once)")
        except NotDone as exc:
            print(f"bench/e2e.py: work not done, no figures: {exc}", file=sys.stderr)
            return 1
    med = {tool: Measurement(tool, *(statistics.median(getattr(m, f) for m in ms)
                                     for f in ("wall_s", "cpu_s", "peak_rss_mb")))
           for tool, ms in results.items()}
    bare, ours = med["bare"], med["groqbatch"]
    wall, cpu = ours.wall_s / bare.wall_s, ours.cpu_s / bare.cpu_s
    print(f"median bare     : wall {bare.wall_s:6.2f} s  cpu {bare.cpu_s:6.2f} s  RSS {bare.peak_rss_mb:.0f} MB")
    print(f"median groqbatch: wall {ours.wall_s:6.2f} s  cpu {ours.cpu_s:6.2f} s  RSS {ours.peak_rss_mb:.0f} MB")
    print(f"groqbatch / bare: wall {wall:.2f}x (target ≤ {TARGET_WALL}x: "
          f"{'met' if wall <= TARGET_WALL else 'not met'}), cpu {cpu:.2f}x (target ≤ {TARGET_CPU}x: "
          f"{'met' if cpu <= TARGET_CPU else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
