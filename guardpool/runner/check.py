"""One check: guard verdicts and budgets combined into one audited decision.

    check(services, op, scope)
      │ 1. input        measured once (policy/inputs.py): outside the contract,
      │                 or size > max_input_bytes ─────────────────────► deny
      │ 2. match        policy.match(labels): guards, limits, estimate, price (cached)
      │ 3. budgets      store.reserve(every matching limit, one atomic step)
      │                 refused / store down ──────────────────────────► deny
      │ 4. guards       GuardRunner: banks in-process, callables in the pool
      │                 any deny ──────────────► release reservation ──► deny
      │                 any ask (guard, on_exceed/on_warn_at = "ask") ─► ask:
      │                 reservation held until run.approve / run.reject
      │ 5. ledger       one batch: check, reserve, verdicts, decision
      │                 write fails (on_failure=deny) ► release ───────► deny
      ▼
    Decision  (granted + reserved: remembered for settle)

Budgets are reserved *before* guards run so that an agent burning its budget
in a loop is refused without spending worker time; a guard deny then returns
the reservation. Every failure path ends in a deny (fail closed).

Joint path (store and ledger in one SQLite file): steps 3 and 5 become one
transaction. When a callable guard would run, a snapshot read (no write lock)
first refuses an exhausted budget without spending worker time; the guards
run; then the reservation is taken and the decision's events appended in the
same commit, so the file never holds a reservation without its audit trail or
the reverse. With only regex banks (in-process, microseconds) or no guard at
all, there is no worker time to spare and no snapshot: the transaction decides,
and a refusal is recorded with the banks' verdicts beside it. A guard deny
reserves nothing at all. Hooks raised while the transaction is open fire after
it ends.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from guardpool.audit.events import AuditEvent
from guardpool.audit.ledger import LedgerWriteError
from guardpool.policy import inputs
from guardpool.policy.model import Action, Decision, GuardVerdict, LimitStatus, Operation
from guardpool.policy.money import format_amount
from guardpool.policy.runtime import PolicyMatch
from guardpool.runner import budget
from guardpool.runner.pending import Pending
from guardpool.runner.scope import Scope
from guardpool.runner.services import Services
from guardpool.runner.verdicts import GuardResult, combine, decide
from guardpool.store.base import CounterState, StoreAnswer, refused_items
from guardpool.store.errors import StoreUnavailable
from guardpool.store.sqlite import Joint, SqliteStore

log = logging.getLogger("guardpool")

LEDGER_DOWN = "audit ledger unavailable: the decision could not be recorded"


def check(svc: Services, op: Operation, scope: Scope, match: PolicyMatch | None = None) -> Decision:
    """Decide on ``op``; never raises for the operation's sake (fails closed).

    ``match``: ``policy.match(op.labels)`` when the caller has it already.
    """
    c = _Check(svc, op, scope, match)
    try:
        decision = c.decide()
    except Exception as exc:  # fail closed on anything unforeseen
        log.exception("guardpool: check %s failed", scope.decision_id)
        c.release_quietly()
        decision = decide(scope, "deny", [f"internal error: {exc}"], c.verdicts, c.limits)
        svc.audit.append(
            [*c.head, *c.reservation, *c.guard_events, _decision_event(scope, decision)]
        )
    if c.hooks:
        c.flush_hooks()
    return decision


def _decision_event(scope: Scope, decision: Decision) -> AuditEvent:
    return scope.event("decision", outcome=decision.action, reason="; ".join(decision.reasons))


def _where(p: budget.PlannedItem) -> dict[str, Any]:
    return {"pattern": p.limit.pattern, "dimension": p.item.dimension}


def _amount(p: budget.PlannedItem, value: int) -> str:
    return format_amount(p.item.dimension, value)


def _hook(p: budget.PlannedItem, state: CounterState) -> dict[str, Any]:
    return {**_where(p), "used": state.used, "reserved": state.reserved, "limit": state.limit}


class _Check:
    """The bookkeeping of one check, so that every exit path can audit and release."""

    __slots__ = (
        "guard_events",
        "head",
        "hooks",
        "input",
        "limits",
        "match",
        "op",
        "plan",
        "planned",
        "reservation",
        "reserved",
        "scope",
        "started",
        "svc",
        "verdicts",
    )

    def __init__(
        self, svc: Services, op: Operation, scope: Scope, match: PolicyMatch | None
    ) -> None:
        self.svc = svc
        self.op = op
        self.scope = scope
        self.started = time.monotonic()
        # The ledger order of one check: check, reservation events, verdicts, decision.
        self.head: list[AuditEvent] = []
        self.reservation: list[AuditEvent] = []
        self.guard_events: list[AuditEvent] = []
        self.hooks: list[tuple[str, dict[str, Any]]] = []  # fired once nothing is held
        self.reserved = False
        self.match = match
        self.planned: tuple[budget.PlannedItem, ...] = ()
        self.plan: budget.Plan | None = None
        self.limits: tuple[LimitStatus, ...] = ()
        self.verdicts: tuple[GuardVerdict, ...] = ()
        self.input: inputs.Measured | None = None  # measured in decide()

    def decide(self) -> Decision:
        svc, op, scope = self.svc, self.op, self.scope
        # One measure for the cap, the ledger, the banks and the pool. Refused
        # here is a deny whatever a guard's on_error says: no guard ran.
        try:
            measured = inputs.measure(op.input)
        except inputs.InputError as exc:
            self.head.append(scope.event("check", **svc.audit.input_fields(op.input)))
            return self.finish([str(exc)], "deny")
        self.head.append(scope.event("check", **svc.audit.input_fields(measured)))
        too_large = inputs.too_large(measured.size, svc.max_input_bytes)
        if too_large is not None:
            return self.finish([too_large], "deny")
        self.input = measured
        match = self.match
        if match is None:
            match = self.match = svc.policy.match(op.labels)
        plan = self.plan = svc.planner.plan(match, op.estimate, scope.run_id, scope.principal)
        self.planned = plan.planned
        if self.planned and svc.joint is not None:
            if not match.pooled:
                # No worker time to spare (banks or no guard): the transaction
                # decides, and records a refusal as the usual path would.
                return self.decide_joint(svc.joint, match, None)
            try:
                states = svc.store.states(plan.items)
            except StoreUnavailable as exc:
                return self.finish([str(exc)], "deny")
            if not refused_items(plan.items, [(s.used, s.reserved) for s in states]):
                return self.decide_joint(svc.joint, match, states)
            # Refused already: the usual path records the refusal.
        reasons: list[str] = []
        effects: list[Action] = []
        if self.planned:
            try:
                answer = svc.store.reserve(scope.decision_id, plan.items, svc.ttl_ms)
            except StoreUnavailable as exc:
                return self.finish([str(exc)], "deny")
            self.reservation.extend(svc.expired(answer.expired))
            refusals, notes = self.read_reservation(answer)
            if not answer.ok:
                return self.finish(refusals, "deny")
            self.reserved = True
            for reason, effect in notes:
                reasons.append(reason)
                effects.append(effect)
        results, value = svc.guards.run("before", match.before, measured, scope)
        self.take_verdicts(results, reasons, effects)
        action = combine(effects)
        if action == "deny":
            self.release_quietly()
        return self.finish(reasons, action, value)

    def decide_joint(
        self, joint: SqliteStore, match: PolicyMatch, states: tuple[CounterState, ...] | None
    ) -> Decision:
        """``states``: the snapshot read before the guards (None when none was taken)."""
        svc, scope = self.svc, self.scope
        assert self.input is not None and self.plan is not None
        results, value = svc.guards.run("before", match.before, self.input, scope)
        guard_reasons: list[str] = []
        guard_effects: list[Action] = []
        self.take_verdicts(results, guard_reasons, guard_effects)
        if combine(guard_effects) == "deny":  # nothing reserved, nothing to return
            if states is None:  # the limits as they stand, for the decision
                try:
                    states = svc.store.states(self.plan.items)
                except StoreUnavailable:
                    states = ()
            if states:
                self.limits = tuple(
                    budget.limit_status(p, s, exceeded=False) for p, s in self.pairs(states)
                )
            return self.finish(guard_reasons, "deny")

        def step(j: Joint) -> tuple[Decision, StoreAnswer]:
            # The decision id was minted for this check: no retry can share it.
            assert self.plan is not None
            answer = j.reserve(scope.decision_id, self.plan.items, svc.ttl_ms, fresh=True)
            self.reservation.extend(svc.audit.expired_events(answer.expired))
            refusals, notes = self.read_reservation(answer)
            if not answer.ok:  # another check took the last of it since the snapshot
                decision = self.build(refusals, "deny")
            else:
                effects = guard_effects + [effect for _, effect in notes]
                reasons = [reason for reason, _ in notes] + guard_reasons
                decision = self.build(reasons, combine(effects), value)
            svc.audit.append_in(j, self.events(decision))
            return decision, answer

        try:
            decision, answer = joint.joint(step)
        except StoreUnavailable as exc:  # rolled back: nothing reserved, nothing recorded
            self.reservation.clear()
            self.hooks.clear()
            return self.finish([str(exc)], "deny")
        except LedgerWriteError as exc:  # rolled back with the reservation
            svc.audit.failed(exc)
            self.hooks.clear()
            return decide(scope, "deny", [LEDGER_DOWN], self.verdicts, self.limits)
        svc.forget_expired(answer.expired)
        self.reserved = answer.ok
        self.remember(decision)
        return decision

    def pairs(
        self, states: tuple[CounterState, ...]
    ) -> zip[tuple[budget.PlannedItem, CounterState]]:
        return zip(self.planned, states, strict=True)

    def take_verdicts(
        self, results: list[GuardResult], reasons: list[str], effects: list[Action]
    ) -> None:
        verdicts = []
        guard, scope, events = self.svc.audit.guard, self.scope, self.guard_events
        for r in results:
            verdicts.append(r.verdict)
            events.append(guard(scope, r))
            effects.append(r.effect)
            if r.effect != "allow":
                reasons.append(r.verdict.reason)
        self.verdicts = tuple(verdicts)

    def read_reservation(self, answer: StoreAnswer) -> tuple[list[str], list[tuple[str, Action]]]:
        """Limit statuses, audit events, hooks, refusals, and (reason, warn|ask) notes."""
        scope = self.scope
        plan = self.plan
        assert plan is not None
        if answer.ok:
            quiet = budget.quiet_statuses(plan, answer.states)
            if quiet is not None:  # the usual grant: nothing over, nothing to note
                self.limits = quiet
                self.reservation.append(scope.event("reserve", usage=plan.reserve_usage))
                return [], []
        refused = set(answer.refused)
        statuses: list[LimitStatus] = []
        refusals: list[str] = []
        notes: list[tuple[str, Action]] = []
        for i, (p, state) in enumerate(self.pairs(answer.states)):
            total = state.used + state.reserved
            over = i in refused or (not p.item.check and total > state.limit)
            statuses.append(budget.limit_status(p, state, exceeded=over))
            if i in refused:
                reason = budget.describe_refusal(p, state)
                refusals.append(reason)
                self.reservation.append(
                    scope.event("limit_breach", reason=reason, detail=_where(p))
                )
                self.hooks.append(("limit_exceeded", _hook(p, state)))
            elif over:
                ask = p.limit.on_exceed == "ask"
                outcome = "needs approval (on_exceed=ask)" if ask else "allowed (on_exceed=warn)"
                reason = (
                    f"limit {p.limit.pattern} {p.item.dimension} exceeded "
                    f"({_amount(p, total)} of {_amount(p, state.limit)}); {outcome}"
                )
                notes.append((reason, "ask" if ask else "warn"))
                self.reservation.append(scope.event("warning", reason=reason))
                self.hooks.append(("limit_exceeded", _hook(p, state)))
            elif answer.ok and budget.crossed_warning(p.item, state, p.limit.warn_at):
                reason = (
                    f"limit {p.limit.pattern} {p.item.dimension} passed "
                    f"{p.limit.warn_at:.0%} ({_amount(p, total)} of {_amount(p, state.limit)})"
                )
                if p.limit.on_warn_at == "ask":
                    # Crossing the mark is a question for a human, not only a note.
                    reason += "; needs approval (on_warn_at=ask)"
                    notes.append((reason, "ask"))
                self.reservation.append(scope.event("warning", reason=reason))
                self.hooks.append(("limit_warning", _hook(p, state)))
        self.limits = tuple(statuses)
        if answer.ok:
            self.reservation.append(scope.event("reserve", usage=plan.reserve_usage))
        return refusals, notes

    def build(self, reasons: list[str], action: Action, value: Any = None) -> Decision:
        return decide(self.scope, action, reasons, self.verdicts, self.limits, value)

    def events(self, decision: Decision) -> list[AuditEvent]:
        decision_event = _decision_event(self.scope, decision)
        return [*self.head, *self.reservation, *self.guard_events, decision_event]

    def finish(self, reasons: list[str], action: Action, value: Any = None) -> Decision:
        decision = self.build(reasons, action, value)
        if not self.svc.audit.append(self.events(decision)):
            self.release_quietly()
            return decide(self.scope, "deny", [LEDGER_DOWN], self.verdicts, self.limits)
        self.remember(decision)
        return decision

    def remember(self, decision: Decision) -> None:
        # An ask holds its reservation (if any) until the host approves or rejects.
        asking = decision.action == "ask"
        if ((decision.allowed and self.reserved) or asking) and self.match is not None:
            self.svc.pending.remember(
                self.scope.decision_id,
                Pending(
                    match=self.match,
                    run_id=self.scope.run_id,
                    principal=self.scope.principal,
                    started=self.started,
                    planned=self.planned,
                    ask=decision if asking else None,
                    plan=self.plan,
                ),
            )

    def flush_hooks(self) -> None:
        for kind, detail in self.hooks:
            self.svc.hooks.emit(kind, self.scope, **detail)
        self.hooks.clear()

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
