"""Running the local server on a loopback port: in the foreground (``groqbatch serve``) or on a
background thread (tests, ``--selftest``), with uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn

from .config import EmulatorConfig
from .server import Emulator, create_app


def _uvicorn_config(emulator: Emulator, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(emulator=emulator),
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level == "debug",
        lifespan="off",
        # Stay alive between a client's calls; SDK clients keep connections pooled.
        timeout_keep_alive=30,
    )


def serve_forever(config: EmulatorConfig, *, host: str = "127.0.0.1", port: int = 8000,
                  log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    emulator = Emulator(config)
    try:
        uvicorn.Server(_uvicorn_config(emulator, host, port, log_level)).run()
    finally:
        emulator.close()


class ThreadedServer:
    """The server on a free loopback port, on a daemon thread, for as long as the ``with`` lasts.

    >>> with ThreadedServer(EmulatorConfig()) as server:   # doctest: +SKIP
    ...     httpx.get(server.url + "/healthz")
    """

    def __init__(self, config: EmulatorConfig | None = None, *, emulator: Emulator | None = None,
                 host: str = "127.0.0.1", log_level: str = "warning") -> None:
        self.emulator = emulator or Emulator(config)
        self.host = host
        with socket.socket() as probe:
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(self.emulator, host, self.port, log_level))
        self._thread = threading.Thread(target=self._server.run, name="groqbatch-emulator", daemon=True)

    @property
    def url(self) -> str:
        """The host root: the groq SDK's ``base_url``. Add ``/openai/v1`` for the openai SDK."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the local server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.emulator.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
