"""Which decision ids the sidecar issued: settle and release answer 404 for any other.

Without this, settling a made-up id answered ``200 allowed: true`` (and ran
the after-guards against labels the client chose): a client could not tell a
typo from a settle, and a caller probing ids got a friendly answer.

    check ──► book.record(decision)           (bounded LRU, this process)
    settle/release(run_id, id) ──► book.lookup
        known here ──────────────────────────► allowed? go on : 409
        not here ──► ledger: decision event of (run_id, id)?   (after a restart,
                     found ──► as above                         or another sidecar
                     not found ──► 404                          sharing the ledger)
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from guardpool.audit.backend import AuditLedger
from guardpool.audit.events import StoredEvent
from guardpool.audit.ledger import Ledger
from guardpool.policy.model import Decision

# 200k ids x ~150 bytes: ~30 MB at most; older decisions are found in the ledger.
_KEPT = 200_000


class DecisionBook:
    def __init__(self, ledger: AuditLedger) -> None:
        self.ledger = ledger
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, tuple[str, bool]] = OrderedDict()

    def record(self, decision: Decision) -> None:
        with self._lock:
            # "ask" counts as not denied: once approved it is settled like an allow.
            self._seen[decision.id] = (decision.run_id, decision.action != "deny")
            while len(self._seen) > _KEPT:
                self._seen.popitem(last=False)

    def lookup(self, run_id: str, decision_id: str) -> bool | None:
        """True: issued, not denied; False: issued and denied; None: never issued to this run.

        May read the ledger: call it off the event loop.
        """
        with self._lock:
            seen = self._seen.get(decision_id)
        if seen is not None:
            return seen[1] if seen[0] == run_id else None
        allowed: bool | None = None
        for stored in self._decision_events(run_id):
            ev = stored.event
            if ev.decision_id == decision_id and ev.detail.get("phase") != "after":
                allowed = ev.outcome != "deny"
        return allowed

    def _decision_events(self, run_id: str) -> list[StoredEvent]:
        # The two ledger backends read events in different shapes (one chain in a
        # SQLite file, or every host's chain in PostgreSQL).
        if isinstance(self.ledger, Ledger):
            return self.ledger.events(run_id=run_id, kinds=["decision"])
        from guardpool.audit.pg_ledger import PgLedger

        if isinstance(self.ledger, PgLedger):
            return [
                c.stored
                for c in self.ledger.events(run_id=run_id)
                if c.stored.event.kind == "decision"
            ]
        return []  # an unknown ledger: an id we cannot find is refused (404)
