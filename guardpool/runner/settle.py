"""One settle: after-guards on the output, actual usage charged, overruns and breaches audited.

    settle(services, scope, pending, usage, output)
      │ 1. after-guards   GuardRunner, in order, rewrites chained (output given only)
      │ 2. actual usage   Usage in store units; cost from match.price when only tokens
      │ 3. store.settle   replaces the reservation (idempotent by decision id)
      │                   store down ─► warn: the reservation expires at its estimate
      │ 4. per planned item (limit x dimension):
      │      actual > its estimate ─► overrun (named by limit pattern and dimension)
      │      used > limit ─► limit_breach; a post-hoc deny limit makes the decision deny
      │ 5. ledger         one batch; write fails (on_failure=deny) ─► deny
      ▼
    Decision (the after-guards' answer on the output, with the limits after charging)

Joint path (store and ledger in one SQLite file): steps 3 and 5 are one
transaction. If the ledger write fails there, the charge is made again on its
own, so the budget is never left holding only the estimate.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

from guardpool.audit.events import AuditEvent
from guardpool.audit.ledger import LedgerWriteError
from guardpool.policy import inputs
from guardpool.policy.model import Action, Decision, GuardVerdict, LimitStatus, Usage
from guardpool.policy.money import format_amount
from guardpool.runner import budget
from guardpool.runner.pending import Pending
from guardpool.runner.scope import Scope
from guardpool.runner.services import Services
from guardpool.runner.verdicts import combine, decide
from guardpool.store.base import CounterState, StoreAnswer
from guardpool.store.errors import StoreUnavailable
from guardpool.store.sqlite import Joint

LEDGER_DOWN = "audit ledger unavailable: the settle could not be recorded"


def settle(svc: Services, scope: Scope, p: Pending, usage: Usage, output: Any) -> Decision:
    s = _Settle(svc, scope, p)
    value = s.after_guards(output)
    actual = budget.usage_amounts(usage, p.match.price)
    if "wall_ms" not in actual:
        actual["wall_ms"] = int((time.monotonic() - p.started) * 1000)
    decision = s.joint(actual, value) if svc.joint is not None else s.separate(actual, value)
    for kind, detail in s.hooks:
        svc.hooks.emit(kind, scope, **detail)
    return decision


class _Settle:
    def __init__(self, svc: Services, scope: Scope, p: Pending) -> None:
        self.svc = svc
        self.scope = scope
        self.p = p
        self.events: list[AuditEvent] = []
        self.reasons: list[str] = []
        self.effects: list[Action] = []
        self.verdicts: tuple[GuardVerdict, ...] = ()
        self.limits: tuple[LimitStatus, ...] = ()
        self.hooks: list[tuple[str, dict[str, Any]]] = []  # fired once nothing is held

    def after_guards(self, output: Any) -> Any:
        if output is None or not self.p.match.after:
            return output
        # The output is hostile like an input: the same contract and cap, and a
        # refusal is a deny whatever an after-guard's on_error says.
        try:
            measured = inputs.measure(output, "output")
            refusal = inputs.too_large(measured.size, self.svc.max_input_bytes, "output")
        except inputs.InputError as exc:
            refusal = str(exc)
        if refusal is not None:
            self.reasons.append(refusal)
            self.effects.append("deny")
            return None
        results, value = self.svc.guards.run("after", self.p.match.after, measured, self.scope)
        self.verdicts = tuple(r.verdict for r in results)
        for r in results:
            self.events.append(self.svc.audit.guard(self.scope, r))
            self.effects.append(r.effect)
            if r.effect != "allow":
                self.reasons.append(r.verdict.reason)
        return value

    def separate(self, actual: dict[str, int], value: Any) -> Decision:
        try:
            answer = self.svc.store.settle(self.scope.decision_id, actual)
        except StoreUnavailable as exc:
            self.store_down(exc)
        else:
            self.events.extend(self.svc.expired(answer.expired))
            self.account(answer, actual)
        decision = self.build(value)
        if not self.svc.audit.append(self.events) and decision.allowed:
            return self.ledger_down()
        return decision

    def joint(self, actual: dict[str, int], value: Any) -> Decision:
        svc = self.svc
        assert svc.joint is not None
        before = len(self.events)

        def step(j: Joint) -> tuple[Decision, StoreAnswer]:
            answer = j.settle(self.scope.decision_id, actual)
            self.events.extend(svc.audit.expired_events(answer.expired))
            self.account(answer, actual)
            decision = self.build(value)
            svc.audit.append_in(j, self.events)
            return decision, answer

        try:
            decision, answer = svc.joint.joint(step)
        except StoreUnavailable as exc:  # rolled back: settle without the store
            del self.events[before:]
            self.hooks.clear()
            self.limits = ()
            self.store_down(exc)
            decision = self.build(value)
            if not svc.audit.append(self.events) and decision.allowed:
                return self.ledger_down()
            return decision
        except LedgerWriteError as exc:  # rolled back: charge the actual usage on its own
            svc.audit.failed(exc)
            self.hooks.clear()
            with contextlib.suppress(StoreUnavailable):  # else it expires at its estimate
                svc.forget_expired(svc.store.settle(self.scope.decision_id, actual).expired)
            return self.ledger_down()
        svc.forget_expired(answer.expired)
        return decision

    def store_down(self, exc: StoreUnavailable) -> None:
        # The reservation stays and expires at its estimate; say so loudly.
        self.reasons.append(f"{exc} (at settle)")
        self.effects.append("warn")

    def build(self, value: Any) -> Decision:
        action = combine(self.effects)
        decision = decide(self.scope, action, self.reasons, self.verdicts, self.limits, value)
        reason = "; ".join(self.reasons)
        detail = {"phase": "after"}
        self.events.append(
            self.scope.event("decision", outcome=action, reason=reason, detail=detail)
        )
        return decision

    def ledger_down(self) -> Decision:
        reasons = [*self.reasons, LEDGER_DOWN]
        return decide(self.scope, "deny", reasons, self.verdicts, self.limits)

    def account(self, answer: StoreAnswer, actual: dict[str, int]) -> None:
        if not answer.ok:
            return
        self.events.append(self.scope.event("settle", usage=actual))
        self.overruns(actual)
        self.breaches(answer)

    def overruns(self, actual: dict[str, int]) -> None:
        """An actual above the estimate reserved for one limit (charged in full all the same).

        Keyed by limit *and* dimension: a post-hoc limit on the same dimension
        (which reserves nothing) must not hide another limit's overrun.
        """
        for planned in self.p.planned:
            item = planned.item
            amount = actual.get(item.dimension)
            if not item.amount or amount is None or amount <= item.amount:
                continue
            pattern = planned.limit.pattern
            detail = {
                "pattern": pattern,
                "dimension": item.dimension,
                "estimate": item.amount,
                "actual": amount,
            }
            fmt = functools.partial(format_amount, item.dimension)
            reason = (
                f"{pattern} {item.dimension}: actual {fmt(amount)} > estimate {fmt(item.amount)}"
            )
            self.events.append(self.scope.event("overrun", reason=reason, detail=detail))
            self.hooks.append(("overrun", detail))

    def breaches(self, answer: StoreAnswer) -> None:
        """Limits at settle, against the actual usage just charged; post-hoc ones can deny."""
        states = answer.states
        if self.p.plan is not None:
            within = budget.settled_statuses(self.p.plan, states)
            if within is not None:  # the usual settle: no counter over its limit
                self.limits = within
                return
        # The store answers in the reservation's item order, which is the plan's when
        # this process planned it; a settle from elsewhere (planned without the
        # estimate) looks its counters up by key.
        by_key: dict[tuple[str, str], CounterState] | None = None
        statuses: list[LimitStatus] = []
        for i, planned in enumerate(self.p.planned):
            limit, item = planned.limit, planned.item
            dim = item.dimension
            state = states[i] if i < len(states) else None
            if state is None or state.key != item.key or state.dimension != dim:
                if by_key is None:
                    by_key = {(s.key, s.dimension): s for s in states}
                state = by_key.get((item.key, dim))
                if state is None:
                    continue
            over = state.used > state.limit
            statuses.append(budget.limit_status(planned, state, exceeded=over))
            if not over:
                continue
            used, cap = format_amount(dim, state.used), format_amount(dim, state.limit)
            reason = f"limit {limit.pattern} {dim}: {used} of {cap} used"
            if limit.enforcement == "post-hoc" and limit.on_exceed == "deny":
                self.reasons.append(f"post-hoc {reason}")
                self.effects.append("deny")
            detail = {"pattern": limit.pattern, "dimension": dim, "enforcement": limit.enforcement}
            self.events.append(self.scope.event("limit_breach", reason=reason, detail=detail))
            hook = {"pattern": limit.pattern, "dimension": dim, "used": state.used}
            self.hooks.append(
                ("limit_exceeded", {**hook, "reserved": state.reserved, "limit": state.limit})
            )
        self.limits = tuple(statuses)
