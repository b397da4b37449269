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
"""

from __future__ import annotations

import time
from typing import Any

from guardpool.audit.events import AuditEvent
from guardpool.policy.model import Action, Decision, GuardVerdict, LimitStatus, Usage
from guardpool.runner import budget
from guardpool.runner.pending import Pending
from guardpool.runner.scope import Scope
from guardpool.runner.services import Services
from guardpool.runner.verdicts import combine, decide
from guardpool.store.base import StoreAnswer
from guardpool.store.errors import StoreUnavailable


def settle(svc: Services, scope: Scope, p: Pending, usage: Usage, output: Any) -> Decision:
    events: list[AuditEvent] = []
    reasons: list[str] = []
    effects: list[Action] = []
    verdicts: tuple[GuardVerdict, ...] = ()
    value = output
    if output is not None and p.match.after:
        results, value = svc.guards.run("after", p.match.after, output, scope)
        verdicts = tuple(r.verdict for r in results)
        for r in results:
            events.append(svc.audit.guard(scope, r))
            effects.append(r.effect)
            if r.effect != "allow":
                reasons.append(r.verdict.reason)
    actual = budget.usage_amounts(usage, p.match.price)
    if "wall_ms" not in actual:
        actual["wall_ms"] = int((time.monotonic() - p.started) * 1000)
    limits: tuple[LimitStatus, ...] = ()
    try:
        answer = svc.store.settle(scope.decision_id, actual)
    except StoreUnavailable as exc:
        # The reservation stays and expires at its estimate; say so loudly.
        reasons.append(f"budget store unavailable at settle: {exc}")
        effects.append("warn")
    else:
        events.extend(svc.expired(answer.expired))
        if answer.ok:
            events.append(scope.event("settle", usage=actual))
            _overruns(svc, scope, p, actual, events)
            limits = _breaches(svc, scope, p, answer, events, reasons, effects)
    action = combine(effects)
    decision = decide(scope, action, reasons, verdicts, limits, value)
    events.append(
        scope.event(
            "decision", outcome=action, reason="; ".join(reasons), detail={"phase": "after"}
        )
    )
    if not svc.audit.append(events) and decision.allowed:
        reasons.append("audit ledger unavailable: the settle could not be recorded")
        return decide(scope, "deny", reasons, verdicts, limits)
    return decision


def _overruns(
    svc: Services, scope: Scope, p: Pending, actual: dict[str, int], events: list[AuditEvent]
) -> None:
    """An actual above the estimate reserved for one limit (charged in full all the same).

    Keyed by limit *and* dimension: a post-hoc limit on the same dimension
    (which reserves nothing) must not hide another limit's overrun.
    """
    for planned in p.planned:
        item = planned.item
        amount = actual.get(item.dimension)
        if not item.amount or amount is None or amount <= item.amount:
            continue
        detail = {
            "pattern": planned.limit.pattern,
            "dimension": item.dimension,
            "estimate": item.amount,
            "actual": amount,
        }
        reason = (
            f"{planned.limit.pattern} {item.dimension}: actual {amount} > estimate {item.amount}"
        )
        events.append(scope.event("overrun", reason=reason, detail=detail))
        svc.hooks.emit("overrun", scope, **detail)


def _breaches(
    svc: Services,
    scope: Scope,
    p: Pending,
    answer: StoreAnswer,
    events: list[AuditEvent],
    reasons: list[str],
    effects: list[Action],
) -> tuple[LimitStatus, ...]:
    """Limits at settle, against the actual usage just charged; post-hoc ones can deny."""
    by_key = {(s.key, s.dimension): s for s in answer.states}
    statuses: list[LimitStatus] = []
    for planned in p.planned:
        limit, dim = planned.limit, planned.item.dimension
        state = by_key.get((planned.item.key, dim))
        if state is None:
            continue
        over = state.used > state.limit
        statuses.append(budget.limit_status(planned, state, exceeded=over))
        if not over:
            continue
        reason = f"limit {limit.pattern} {dim}: {state.used} of {state.limit} used"
        if limit.enforcement == "post-hoc" and limit.on_exceed == "deny":
            reasons.append(f"post-hoc {reason}")
            effects.append("deny")
        detail = {"pattern": limit.pattern, "dimension": dim, "enforcement": limit.enforcement}
        events.append(scope.event("limit_breach", reason=reason, detail=detail))
        svc.hooks.emit(
            "limit_exceeded",
            scope,
            pattern=limit.pattern,
            dimension=dim,
            used=state.used,
            reserved=state.reserved,
            limit=state.limit,
        )
    return tuple(statuses)
