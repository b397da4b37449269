"""Granted decisions awaiting their settle, and settled ones remembered for retries.

check ──remember(id, Pending)──► table ──take(id)──► settle ──done(id, Decision)──► LRU

A settle retried in this process gets the first answer back from the LRU; one
from another process (sharing the store) is decided by the store's idempotency.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

import msgspec

from guardpool.policy.model import Decision
from guardpool.policy.runtime import PolicyMatch
from guardpool.runner.budget import Plan, PlannedItem

# Settled decisions remembered for idempotent settle answers within this process.
_SETTLED_MEMORY = 4096


class Pending(msgspec.Struct, frozen=True):
    """What settle needs to know about a granted decision."""

    match: PolicyMatch
    run_id: str
    principal: str
    started: float  # time.monotonic() when the check began (default wall_ms)
    planned: tuple[PlannedItem, ...]
    # An ``ask`` decision awaiting the host's approve/reject; None once answered.
    ask: Decision | None = None
    # The approved decision, so that approving twice answers the same.
    approved: Decision | None = None
    # The check's plan (``planned`` is its items): settle's limit statuses start from
    # its templates. None when settle planned on its own (a decision from elsewhere).
    plan: Plan | None = None


class PendingTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        self._settled: OrderedDict[str, Decision] = OrderedDict()

    def remember(self, decision_id: str, pending: Pending) -> None:
        with self._lock:
            self._pending[decision_id] = pending

    def take(self, decision_id: str) -> tuple[Decision | None, Pending | None]:
        """(the settle's earlier answer, the pending state); each None when unknown."""
        with self._lock:
            return self._settled.get(decision_id), self._pending.pop(decision_id, None)

    def get(self, decision_id: str) -> Pending | None:
        with self._lock:
            return self._pending.get(decision_id)

    def pop(self, decision_id: str) -> Pending | None:
        with self._lock:
            return self._pending.pop(decision_id, None)

    def done(self, decision_id: str, decision: Decision) -> None:
        with self._lock:
            self._settled[decision_id] = decision
            while len(self._settled) > _SETTLED_MEMORY:
                self._settled.popitem(last=False)

    def forget(self, decision_ids: Iterable[str]) -> None:
        """Reservations that expired: no settle can apply any more."""
        with self._lock:
            for decision_id in decision_ids:
                self._pending.pop(decision_id, None)
