"""The collaborators a check and a settle work with, handed in by the Enforcer.

    Services(policy, store, guards: GuardRunner, audit: AuditSink, hooks: HookBus,
             pending: PendingTable, ttl_ms, max_input_bytes)

check.py and settle.py take this bundle, never the Enforcer: they see exactly
these objects and nothing private.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from guardpool.audit.events import AuditEvent
from guardpool.policy.runtime import Policy
from guardpool.runner.audit_sink import AuditSink
from guardpool.runner.guard_runner import GuardRunner
from guardpool.runner.hooks import HookBus
from guardpool.runner.pending import PendingTable
from guardpool.store.base import BudgetStore, Expired


class Services(msgspec.Struct, frozen=True, kw_only=True):
    policy: Policy
    store: BudgetStore
    guards: GuardRunner
    audit: AuditSink
    hooks: HookBus
    pending: PendingTable
    ttl_ms: int
    max_input_bytes: int

    def expired(self, expired: Sequence[Expired]) -> list[AuditEvent]:
        """Reservations a store step expired: forgotten here, audited and hooked."""
        if not expired:
            return []
        self.pending.forget(e.reservation_id for e in expired)
        return self.audit.expired(expired)
