"""One check: guard verdicts and budgets combined into one audited decision.

    check(services, op, scope)
      │ 1. input size   > max_input_bytes ──────────────────────────────► deny
      │ 2. match        policy.match(labels): guards, limits, estimate, price (cached)
      │ 3. budgets      store.reserve(every matching limit, one atomic step)
      │                 refused / store down ──────────────────────────► deny
      │ 4. guards       GuardRunner: banks in-process, callables in the pool
      │                 any deny ──────────────► release reservation ──► deny
      │ 5. ledger       one batch: check, reserve, verdicts, decision
      │                 write fails (on_failure=deny) ► release ───────► deny
      ▼
    Decision  (granted + reserved: remembered for settle)

Budgets are reserved *before* guards run so that an agent burning its budget
in a loop is refused without spending worker time; a guard deny then returns
the reservation. Every failure path ends in a deny (fail closed).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from guardpool.audit.events import AuditEvent
from guardpool.policy.model import Action, Decision, GuardVerdict, LimitStatus, Operation
from guardpool.runner import budget
from guardpool.runner.pending import Pending
from guardpool.runner.scope import Scope
from guardpool.runner.services import Services
from guardpool.runner.verdicts import combine, decide
from guardpool.store.base import StoreAnswer
from guardpool.store.errors import StoreUnavailable

log = logging.getLogger("guardpool")


def check(svc: Services, op: Operation, scope: Scope) -> Decision:
    """Decide on ``op``; never raises for the operation's sake (fails closed)."""
    c = _Check(svc, op, scope)
    try:
        return c.decide()
    except Exception as exc:  # fail closed on anything unforeseen
        log.exception("guardpool: check %s failed", scope.decision_id)
        c.release_quietly()
        decision = decide(scope, "deny", [f"internal error: {exc}"], c.verdicts, c.limits)
        c.events.append(_decision_event(scope, decision))
        svc.audit.append(c.events)
        return decision


def _decision_event(scope: Scope, decision: Decision) -> AuditEvent:
    return scope.event("decision", outcome=decision.action, reason="; ".join(decision.reasons))


def input_size(value: Any) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(msgspec.json.encode(value))


class _Check:
    """The bookkeeping of one check, so that every exit path can audit and release."""

    def __init__(self, svc: Services, op: Operation, scope: Scope) -> None:
        self.svc = svc
        self.op = op
        self.scope = scope
        self.started = time.monotonic()
        self.events: list[AuditEvent] = []
        self.reserved = False
        self.planned: list[budget.PlannedItem] = []
        self.limits: tuple[LimitStatus, ...] = ()
        self.verdicts: tuple[GuardVerdict, ...] = ()

    def decide(self) -> Decision:
        svc, op, scope = self.svc, self.op, self.scope
        self.events.append(scope.event("check", **svc.audit.input_fields(op.input)))
        size = input_size(op.input)
        if size > svc.max_input_bytes:
            reason = f"input too large: {size} bytes > max_input_bytes {svc.max_input_bytes}"
            return self.finish([reason], "deny")
        match = svc.policy.match(op.labels)
        self.planned = budget.plan_reservation(match, op.estimate, scope.run_id, scope.principal)
        reasons: list[str] = []
        effects: list[Action] = []
        if self.planned:
            try:
                answer = svc.store.reserve(
                    scope.decision_id, [p.item for p in self.planned], svc.ttl_ms
                )
            except StoreUnavailable as exc:
                return self.finish([f"budget store unavailable: {exc}"], "deny")
            self.events.extend(svc.expired(answer.expired))
            refusals, warnings = self.read_reservation(answer)
            if not answer.ok:
                return self.finish(refusals, "deny")
            self.reserved = True
            reasons.extend(warnings)
            if warnings:
                effects.append("warn")
        results, value = svc.guards.run("before", match.before, op.input, scope)
        self.verdicts = tuple(r.verdict for r in results)
        for r in results:
            self.events.append(svc.audit.guard(scope, r))
            effects.append(r.effect)
            if r.effect != "allow":
                reasons.append(r.verdict.reason)
        action = combine(effects)
        if action == "deny":
            self.release_quietly()
        return self.finish(reasons, action, value)

    def read_reservation(self, answer: StoreAnswer) -> tuple[list[str], list[str]]:
        """Limit statuses, audit events, hooks and reasons from the store's answer."""
        scope, hooks = self.scope, self.svc.hooks
        refused = set(answer.refused)
        statuses: list[LimitStatus] = []
        refusals: list[str] = []
        warnings: list[str] = []
        for i, (p, state) in enumerate(zip(self.planned, answer.states, strict=True)):
            total = state.used + state.reserved
            over = i in refused or (not p.item.check and total > state.limit)
            statuses.append(budget.limit_status(p, state, exceeded=over))
            where = {"pattern": p.limit.pattern, "dimension": p.item.dimension}
            hook_detail = {
                **where,
                "used": state.used,
                "reserved": state.reserved,
                "limit": state.limit,
            }
            if i in refused:
                reason = budget.describe_refusal(p, state)
                refusals.append(reason)
                self.events.append(scope.event("limit_breach", reason=reason, detail=where))
                hooks.emit("limit_exceeded", scope, **hook_detail)
            elif over:
                reason = (
                    f"limit {p.limit.pattern} {p.item.dimension} exceeded "
                    f"({total} of {state.limit}); allowed (on_exceed=warn)"
                )
                warnings.append(reason)
                self.events.append(scope.event("warning", reason=reason))
                hooks.emit("limit_exceeded", scope, **hook_detail)
            elif answer.ok and budget.crossed_warning(p.item, state, p.limit.warn_at):
                reason = (
                    f"limit {p.limit.pattern} {p.item.dimension} passed "
                    f"{p.limit.warn_at:.0%} ({total} of {state.limit})"
                )
                self.events.append(scope.event("warning", reason=reason))
                hooks.emit("limit_warning", scope, **hook_detail)
        self.limits = tuple(statuses)
        if answer.ok:
            usage = {f"{p.limit.pattern}:{p.item.dimension}": p.item.amount for p in self.planned}
            self.events.append(scope.event("reserve", usage=usage))
        return refusals, warnings

    def finish(self, reasons: list[str], action: Action, value: Any = None) -> Decision:
        svc, scope = self.svc, self.scope
        decision = decide(scope, action, reasons, self.verdicts, self.limits, value)
        self.events.append(_decision_event(scope, decision))
        if not svc.audit.append(self.events):
            self.release_quietly()
            reason = "audit ledger unavailable: the decision could not be recorded"
            return decide(scope, "deny", [reason], self.verdicts, self.limits)
        if decision.allowed and self.reserved:
            svc.pending.remember(
                scope.decision_id,
                Pending(
                    match=svc.policy.match(self.op.labels),
                    run_id=scope.run_id,
                    principal=scope.principal,
                    started=self.started,
                    planned=tuple(self.planned),
                ),
            )
        return decision

    def release_quietly(self) -> None:
        if not self.reserved:
            return
        self.reserved = False
        try:
            self.svc.store.release(self.scope.decision_id)
        except StoreUnavailable:
            # The reservation expires at its TTL and is charged at its estimate:
            # conservative, never an overspend.
            log.warning("guardpool: could not release %s; it will expire", self.scope.decision_id)
