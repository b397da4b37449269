"""The audit sink: the ledger, the fail-closed rule, and the events written in one place.

    check / settle ──► events ──► AuditSink.append ──► Ledger (one transaction per batch)
                                      │ LedgerWriteError ─► log + audit_failure hook
                                      └► may the decision stand?  written, or on_failure = allow

A guard's event is written here for both phases (kind ``verdict``, or
``timeout`` / ``crash`` when the pool ended the job, with the matching
``guard_timeout`` / ``guard_crash`` / ``guard_error`` hook), and so are expiries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from guardpool.audit.backend import AuditLedger
from guardpool.audit.events import AuditEvent
from guardpool.audit.ledger import Ledger, LedgerWriteError
from guardpool.runner.hooks import HookBus
from guardpool.runner.scope import Scope
from guardpool.runner.verdicts import GuardResult
from guardpool.store.base import Expired
from guardpool.store.sqlite import Joint

log = logging.getLogger("guardpool")


class AuditSink:
    def __init__(self, ledger: AuditLedger, hooks: HookBus, *, fail_closed: bool) -> None:
        self.ledger = ledger
        self.hooks = hooks
        self.fail_closed = fail_closed

    def input_fields(self, value: Any) -> dict[str, Any]:
        return self.ledger.input_fields(value)

    def append(self, events: Sequence[AuditEvent]) -> bool:
        """Write ``events``; True when the decision may stand (written, or failures allowed)."""
        try:
            self.ledger.append(events)
        except LedgerWriteError as exc:
            self.failed(exc)
            return not self.fail_closed
        return True

    def guard(self, scope: Scope, result: GuardResult) -> AuditEvent:
        """One guard's event, before or after, and its failure hook if it failed."""
        v = result.verdict
        outcome = v.outcome
        if outcome == "timeout":
            self.hooks.emit("guard_timeout", scope, guard=v.guard, reason=v.reason)
        elif outcome == "error":
            hook = "guard_crash" if result.kind == "crash" else "guard_error"
            self.hooks.emit(hook, scope, guard=v.guard, reason=v.reason)
        detail = {"effect": result.effect, "phase": v.phase}
        if result.job:  # a callable's cpu_ms, job outcome, limit, signal
            detail.update(result.job)
        return AuditEvent(
            kind=result.kind,
            run_id=scope.run_id,
            principal=scope.principal,
            labels=scope.labels,
            decision_id=scope.decision_id,
            guard=v.guard,
            outcome=outcome,
            reason=v.reason,
            duration_ms=v.ms,
            detail=detail,
        )

    def append_in(self, joint: Joint, events: Sequence[AuditEvent]) -> None:
        """Write inside the SQLite store's transaction (the joint path, which the enforcer
        takes only when the ledger is the SQLite ``Ledger`` sharing the store's file).

        The ledger learns its new chain head only if that transaction commits.
        """
        ledger = self.ledger
        if not isinstance(ledger, Ledger):
            raise LedgerWriteError("a joint store+ledger transaction needs the SQLite ledger")
        head = ledger.append_in(joint.conn, events)
        if head is not None:
            joint.after_commit(lambda: ledger.committed(head))

    def failed(self, exc: LedgerWriteError) -> None:
        """A write that failed inside someone else's transaction (the joint path)."""
        log.error("guardpool: audit ledger write failed: %s", exc)
        self.hooks.emit("audit_failure", error=str(exc))

    @staticmethod
    def expired_events(expired: Sequence[Expired]) -> list[AuditEvent]:
        return [
            AuditEvent(kind="expire", decision_id=e.reservation_id, usage=dict(e.charged))
            for e in expired
        ]

    def notify_expired(self, expired: Sequence[Expired]) -> None:
        for e in expired:
            scope = Scope(e.reservation_id, "", "", ())
            self.hooks.emit("reservation_expired", scope, charged=dict(e.charged))
