"""Seeded fault decisions.

Each decision hashes (seed, fault name, key), so it does not depend on the order in which
requests arrive: line ``custom_id=r7`` of a batch is garbled in every replay of the scenario,
whatever else ran before it. Calls with no natural key use a per-fault counter instead.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import defaultdict

from .config import ChatEndpoint, Scenario, Storm


class FaultInjector:
    """Answers "does this fault happen here?" for the current :class:`Scenario`."""

    def __init__(self, scenario: Scenario, *, started_at: float) -> None:
        self._lock = threading.Lock()
        self._counters: defaultdict[str, itertools.count[int]] = defaultdict(itertools.count)
        self.started_at = started_at
        self.scenario = scenario

    def replace(self, scenario: Scenario, *, started_at: float) -> None:
        """Play a new scenario from now on (storm windows restart at ``started_at``)."""
        with self._lock:
            self.scenario = scenario
            self.started_at = started_at
            self._counters.clear()

    def chance(self, fault: str, rate: float, key: str | None = None) -> bool:
        """True for a ``rate`` share of keys; deterministic per (seed, fault, key)."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        if key is None:
            with self._lock:
                key = f"#{next(self._counters[fault])}"
        digest = hashlib.blake2b(
            f"{self.scenario.seed}\x00{fault}\x00{key}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big") / 2**64 < rate

    def server_error(self, endpoint: ChatEndpoint, key: str | None = None) -> bool:
        return self.chance(f"error:{endpoint}", self.scenario.error_rates.get(endpoint, 0.0), key)

    def drop_connection(self, endpoint: ChatEndpoint, key: str | None = None) -> bool:
        rate = self.scenario.drop_connection_rates.get(endpoint, 0.0)
        return self.chance(f"drop:{endpoint}", rate, key)

    def storm(self, now: float, tier: str, key: str | None = None) -> Storm | None:
        """The storm that strikes a chat call made at emulated time ``now``, if any."""
        elapsed = now - self.started_at
        for index, storm in enumerate(self.scenario.storms):
            if storm.tier not in ("any", tier):
                continue
            if not storm.start_s <= elapsed < storm.start_s + storm.duration_s:
                continue
            if self.chance(f"storm:{index}", storm.rate, key):
                return storm
        return None
