"""Running the real ``groqbatch`` command in a subprocess, bounded in time."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from pipeline.emulator.config import DEFAULT_API_KEY


def groqbatch_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m pipeline``."""
    script = Path(sys.executable).parent / "groqbatch"
    if script.exists():
        return [str(script)]
    found = shutil.which("groqbatch")
    return [found] if found else [sys.executable, "-m", "pipeline"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GROQ_", "OPENAI_"))
           and k not in ("GROQBATCH_LEDGER", "GROQBATCH_LEASE_S", "GROQBATCH_PRICES",
                         "GROQBATCH_CRASH_AT")}
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout_s: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*groqbatch_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env=clean_env(**env),
        check=False,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServeProcess:
    """``groqbatch serve`` on a free loopback port, in its own process."""

    def __init__(self, *args: str, api_key: str = DEFAULT_API_KEY, log: Path | None = None) -> None:
        """``log``: send the server's output to this file instead of pipes — for long runs,
        whose output could fill a pipe nobody reads until :meth:`stop` and block the server."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.stdout = self.stderr = ""
        self.log = log
        output = log.open("ab") if log is not None else subprocess.PIPE
        self.proc = subprocess.Popen(
            [*groqbatch_command(), "serve", "--port", str(self.port), "--log-level", "warning", *args],
            stdout=output,
            stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
            text=True,
            env=clean_env(GROQ_API_KEY=api_key),
        )
        if log is not None:
            output.close()  # the child holds its own copy

    def wait_ready(self, timeout_s: float = 20) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"serve exited early: {self.stderr}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"serve did not answer on {self.url}")

    def stop(self) -> int:
        """Terminate, collect what it printed (``self.stdout``/``self.stderr``), return its code."""
        self.proc.terminate()
        try:
            self.stdout, self.stderr = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, self.stderr = self.proc.communicate(timeout=10)
        if self.log is not None:
            self.stdout, self.stderr = "", self.log.read_text(errors="replace")
        return self.proc.returncode
