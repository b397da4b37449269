"""The collaborators a check and a settle work with, handed in by the Enforcer.

    Services(policy, store, guards: GuardRunner, audit: AuditSink, hooks: HookBus,
             pending: PendingTable, planner: Planner, ttl_ms, max_input_bytes,
             joint: SqliteStore | None)

``joint`` is the store when it and the ledger share one SQLite file and a
failed audit write denies: a check's reservation and its events (and a
settle's charge and its events) then commit in one transaction.

check.py and settle.py take this bundle, never the Enforcer: they see exactly
these objects and nothing private.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from guardpool.audit.events import AuditEvent
from guardpool.policy.runtime import Policy
from guardpool.runner.audit_sink import AuditSink
from guardpool.runner.budget import Planner
from guardpool.runner.guard_runner import GuardRunner
from guardpool.runner.hooks import HookBus
from guardpool.runner.pending import PendingTable
from guardpool.store.base import BudgetStore, Expired
from guardpool.store.sqlite import SqliteStore


class Services(msgspec.Struct, frozen=True, kw_only=True):
    policy: Policy
    store: BudgetStore
    guards: GuardRunner
    audit: AuditSink
    hooks: HookBus
    pending: PendingTable
    ttl_ms: int
    max_input_bytes: int
    planner: Planner = msgspec.field(default_factory=Planner)
    joint: SqliteStore | None = None

    def expired(self, expired: Sequence[Expired]) -> list[AuditEvent]:
        """Reservations a store step expired: forgotten here, hooked, and their events."""
        if not expired:
            return []
        self.forget_expired(expired)
        return self.audit.expired_events(expired)

    def forget_expired(self, expired: Sequence[Expired]) -> None:
        """After the expiry committed: no settle applies to them any more; hooks fire."""
        if not expired:  # nearly every step: skip the pending table's lock
            return
        self.pending.forget(e.reservation_id for e in expired)
        self.audit.notify_expired(expired)
