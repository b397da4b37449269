"""The Enforcer: builds the collaborators, hands them to check and settle, owns their lifetime.

    Enforcer(policy, pool=, store=, ledger=)
      ├─ HookBus        enforcer.on(kind, callback)
      ├─ AuditSink      ledger + fail-closed rule (+ hooks for audit failures, guard failures)
      ├─ GuardRunner    the pool (callables) and in-process regex banks
      ├─ PendingTable   granted decisions awaiting settle
      └─ Services(...) ──► check.check(services, op, scope)      ─► Decision
                      └──► settle.settle(services, scope, ...)   ─► Decision

``Run`` is the host's handle on one budget scope (run id + principal);
``run.check`` / ``run.settle`` / ``run.release`` land here. See
docs/architecture.md for the data flow of one check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from guardpool.audit.backend import AuditLedger, open_ledger
from guardpool.audit.events import AuditEvent
from guardpool.audit.ledger import Ledger
from guardpool.policy.loader import Policy, load_policy
from guardpool.policy.model import Decision, LimitStatus, Operation, Usage
from guardpool.runner import budget
from guardpool.runner.audit_sink import AuditSink
from guardpool.runner.check import check as run_check
from guardpool.runner.guard_runner import GuardRunner
from guardpool.runner.hooks import HOOK_EVENTS, HookBus, HookEvent
from guardpool.runner.pending import Pending, PendingTable
from guardpool.runner.pool import GuardPool
from guardpool.runner.scope import Scope
from guardpool.runner.services import Services
from guardpool.runner.settle import settle as run_settle
from guardpool.runner.verdicts import decide
from guardpool.store import open_store
from guardpool.store.base import BudgetStore, Expired, ReserveItem
from guardpool.store.errors import StoreUnavailable
from guardpool.store.sqlite import SqliteStore

__all__ = ["HOOK_EVENTS", "Enforcer", "HookEvent", "OperationDenied", "Permit", "Run"]

log = logging.getLogger("guardpool")


class OperationDenied(Exception):
    """Raised by ``run.operation(op)`` when the check denies the operation."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__("; ".join(decision.reasons) or "operation denied")


class Enforcer:
    """Checks operations against a policy; see the module docstring."""

    def __init__(
        self,
        policy: Policy,
        *,
        pool: GuardPool | None = None,
        store: BudgetStore | None = None,
        ledger: AuditLedger | None = None,
    ) -> None:
        self.policy = policy
        cfg = policy.config
        self._own_pool = pool is None
        needs_pool = any(g.kind == "callable" for g in policy.guards.values())
        self.pool: GuardPool | None = pool
        if pool is None and needs_pool:
            self.pool = GuardPool.from_config(policy)
        self.store: BudgetStore = store if store is not None else open_store(cfg.store)
        self.ledger: AuditLedger = ledger if ledger is not None else open_ledger(cfg.audit)
        self.hooks = HookBus()
        fail_closed = cfg.audit.on_failure == "deny"
        self.audit = AuditSink(self.ledger, self.hooks, fail_closed=fail_closed)
        self._services = Services(
            policy=policy,
            store=self.store,
            guards=GuardRunner(self.pool),
            audit=self.audit,
            hooks=self.hooks,
            pending=PendingTable(),
            ttl_ms=cfg.store.reservation_ttl_ms,
            max_input_bytes=cfg.pool.max_input_bytes,
            joint=_joint(self.store, self.ledger) if fail_closed else None,
        )
        self._started = False
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def from_config(
        cls, source: str | Path | dict[str, Any] | Policy, *, pool: GuardPool | None = None
    ) -> Enforcer:
        policy = source if isinstance(source, Policy) else load_policy(source)
        return cls(policy, pool=pool)

    def start(self) -> Enforcer:
        if self._started:
            return self
        self._started = True
        if self.pool is not None and self._own_pool:
            self.pool.start()
        detail = {"digest": self.policy.digest, "guards": len(self.policy.guards)}
        self.audit.append(
            [AuditEvent(kind="policy_load", reason=self.policy.source, detail=detail)]
        )
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.pool is not None and self._own_pool:
            self.pool.shutdown()
        self.store.close()
        self.ledger.close()

    def __enter__(self) -> Enforcer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------- API

    def run(self, run_id: str | None = None, principal: str = "") -> Run:
        return Run(self, run_id or uuid.uuid4().hex, principal)

    def on(self, event: str, callback: Callable[[HookEvent], None]) -> None:
        """Call ``callback(HookEvent)`` on every ``event`` (see HOOK_EVENTS)."""
        self.hooks.on(event, callback)

    def usage(self, run_id: str, principal: str = "") -> tuple[LimitStatus, ...]:
        """Current used/reserved of every limit, as seen by this run and principal."""
        planned = [
            budget.PlannedItem(
                ReserveItem(
                    key=budget.scope_key(limit, run_id, principal),
                    dimension=dim,
                    limit=value,
                    amount=0,
                    window_ms=limit.window_ms,
                ),
                limit,
            )
            for limit in self.policy.limits
            for dim, value in limit.dimensions.items()
        ]
        states = self.store.states([p.item for p in planned])
        return tuple(
            budget.limit_status(p, s, exceeded=s.used >= s.limit)
            for p, s in zip(planned, states, strict=True)
        )

    def expire(self) -> tuple[Expired, ...]:
        """Charge and audit reservations whose TTL has passed."""
        expired = self.store.expire()
        if expired:
            self.audit.append(self._services.expired(expired))
        return expired

    def check(self, op: Operation, run_id: str, principal: str) -> Decision:
        if self._closed:
            raise RuntimeError("the enforcer is closed")
        if not self._started:
            self.start()
        # Validates the labels (ValueError, raised to the caller), once per label set.
        match = self.policy.match(op.labels)
        # 128 random bits as 32 hex digits, like uuid4().hex without the UUID object.
        scope = Scope(os.urandom(16).hex(), run_id, principal, op.labels)
        decision = run_check(self._services, op, scope, match)
        if self.hooks.wants("decision"):
            self.hooks.emit("decision", scope, action=decision.action)
        return decision

    def settle(
        self,
        decision: Decision | str,
        usage: Usage,
        output: Any = None,
        *,
        run_id: str = "",
        principal: str = "",
        labels: Sequence[str] = (),
    ) -> Decision:
        decision_id = decision if isinstance(decision, str) else decision.id
        done, pending = self._services.pending.take(decision_id)
        if done is not None:
            return done
        if pending is None:
            # Settled elsewhere (another process sharing the store) or unknown:
            # the store's idempotency decides; labels may come from the caller.
            source = decision if isinstance(decision, Decision) else None
            pending = self._unknown(
                tuple(labels) or (source.labels if source else ()),
                run_id or (source.run_id if source else ""),
                principal or (source.principal if source else ""),
            )
        scope = Scope(decision_id, pending.run_id, pending.principal, pending.match.labels)
        if pending.ask is not None:
            # The host ran an operation nobody approved: charge it, and say so.
            reason = "settled an ask decision that was never approved"
            self.audit.append([scope.event("warning", reason=reason)])
        result = run_settle(self._services, scope, pending, usage, output)
        self._services.pending.done(decision_id, result)
        return result

    def _unknown(self, labels: tuple[str, ...], run_id: str, principal: str) -> Pending:
        match = self.policy.match(labels)
        planned = budget.plan_reservation(match, None, run_id, principal)
        return Pending(match, run_id, principal, time.monotonic(), tuple(planned))

    def approve(self, decision: Decision | str, *, by: str) -> Decision:
        """A human approved an ``ask``: audited, and the decision now allows (same id).

        Approving twice answers the same; an id with no pending ask is a deny
        (unknown, already rejected, or its reservation expired and was charged).
        """
        return self._answer(decision, by, approved=True)

    def reject(self, decision: Decision | str, *, by: str) -> Decision:
        """A human rejected an ``ask``: audited, the reservation released, a deny."""
        return self._answer(decision, by, approved=False)

    def _answer(self, decision: Decision | str, by: str, *, approved: bool) -> Decision:
        if not by:
            raise ValueError("say who answered: by= must name the approver")
        decision_id = decision if isinstance(decision, str) else decision.id
        pending = self._services.pending.get(decision_id)
        if pending is not None and pending.approved is not None and approved:
            return pending.approved  # approving twice answers the same
        asked = pending.ask if pending is not None else None
        if pending is None or asked is None:
            labels = decision.labels if isinstance(decision, Decision) else ()
            scope = Scope(decision_id, "", "", labels)
            return decide(scope, "deny", [f"no pending ask decision {decision_id}"])
        scope = Scope(decision_id, pending.run_id, pending.principal, pending.match.labels)
        kind = "approve" if approved else "reject"
        events = [scope.event(kind, outcome=kind, reason=f"by {by}", detail={"by": by})]
        if approved:
            answer = msgspec.structs.replace(
                asked, allowed=True, reasons=(*asked.reasons, f"approved by {by}")
            )
            if not self.audit.append(events):
                return decide(scope, "deny", ["audit ledger unavailable: approval not recorded"])
            self._services.pending.remember(
                decision_id, msgspec.structs.replace(pending, ask=None, approved=answer)
            )
            return answer
        self._services.pending.pop(decision_id)
        with contextlib.suppress(StoreUnavailable):  # unreleased: it expires at its estimate
            if self.store.release(decision_id):
                events.append(scope.event("release"))
        self.audit.append(events)
        return decide(scope, "deny", [*asked.reasons, f"rejected by {by}"], asked.verdicts)

    def release(self, decision: Decision | str) -> bool:
        decision_id = decision if isinstance(decision, str) else decision.id
        pending = self._services.pending.pop(decision_id)
        try:
            released = self.store.release(decision_id)
        except StoreUnavailable as exc:
            log.warning("guardpool: release %s failed: %s", decision_id, exc)
            return False
        if released:
            scope = Scope(
                decision_id,
                pending.run_id if pending else "",
                pending.principal if pending else "",
                pending.match.labels if pending else (),
            )
            self.audit.append([scope.event("release")])
        return released


def _joint(store: BudgetStore, ledger: AuditLedger) -> SqliteStore | None:
    """The store, when it and the ledger share one SQLite file: one transaction for both."""
    if (
        isinstance(store, SqliteStore)
        and isinstance(ledger, Ledger)
        and Path(store.path).resolve() == ledger.path.resolve()
    ):
        return store
    return None


class Permit:
    """The context form's handle: set ``usage`` (and ``output``) before the block ends."""

    def __init__(self, run: Run, decision: Decision) -> None:
        self.run = run
        self.decision = decision
        self.usage: Usage | None = None
        self.output: Any = None
        self.result: Decision | None = None
        self._released = False

    def release(self) -> None:
        """The operation was cancelled before it ran: return the reservation."""
        self._released = True
        self.run.release(self.decision)


class Run:
    """A budget scope: one agent run, optionally on behalf of a principal."""

    def __init__(self, enforcer: Enforcer, run_id: str, principal: str) -> None:
        self.enforcer = enforcer
        self.run_id = run_id
        self.principal = principal

    def check(self, op: Operation) -> Decision:
        return self.enforcer.check(op, self.run_id, self.principal)

    async def acheck(self, op: Operation) -> Decision:
        return await asyncio.to_thread(self.check, op)

    def settle(self, decision: Decision | str, usage: Usage, output: Any = None) -> Decision:
        return self.enforcer.settle(
            decision, usage, output, run_id=self.run_id, principal=self.principal
        )

    async def asettle(self, decision: Decision | str, usage: Usage, output: Any = None) -> Decision:
        return await asyncio.to_thread(self.settle, decision, usage, output)

    def release(self, decision: Decision | str) -> bool:
        return self.enforcer.release(decision)

    def approve(self, decision: Decision | str, *, by: str) -> Decision:
        """Record a human's yes to an ``ask``; the returned decision allows."""
        return self.enforcer.approve(decision, by=by)

    async def aapprove(self, decision: Decision | str, *, by: str) -> Decision:
        return await asyncio.to_thread(self.enforcer.approve, decision, by=by)

    def reject(self, decision: Decision | str, *, by: str) -> Decision:
        """Record a human's no to an ``ask``; the reservation is released."""
        return self.enforcer.reject(decision, by=by)

    async def areject(self, decision: Decision | str, *, by: str) -> Decision:
        return await asyncio.to_thread(self.enforcer.reject, decision, by=by)

    async def arelease(self, decision: Decision | str) -> bool:
        return await asyncio.to_thread(self.release, decision)

    def usage(self) -> tuple[LimitStatus, ...]:
        return self.enforcer.usage(self.run_id, self.principal)

    @contextlib.contextmanager
    def operation(self, op: Operation) -> Iterator[Permit]:
        """Check, run the block, settle. Raises OperationDenied when denied.

        If the block raises before setting ``permit.usage``, the reservation is
        settled at its estimate: the operation may have spent money already.
        """
        decision = self.check(op)
        if not decision.allowed:
            raise OperationDenied(decision)
        permit = Permit(self, decision)
        try:
            yield permit
        finally:
            if not permit._released:
                permit.result = self.settle(decision, permit.usage or Usage(), permit.output)
