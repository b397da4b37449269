"""Budget strategy: what an operation counts against, and how much.

The store does atomic arithmetic on named counters; this module decides which
counters an operation touches and by how much (the ``limits`` library's split
of strategy from storage):

    Policy.match(labels).limits ──► one counter key per (limit, scope value)
    estimate ─┐                             │
    match.estimate ─► amounts per dimension ┴─► PlannedItem(ReserveItem(key, dim, limit,
    match.price ─┘                                           amount, headroom, ...), limit)

Estimate source order (design §5): the operation's own estimate, then the most
specific ``[estimates]`` entry, then ``[prices]`` applied to estimated tokens.
A dimension with no estimate reserves nothing and instead demands headroom:
``margin × limit`` must remain free. That is an approximation (the pre-flight
fail-fast issue's safety margin), documented in docs/spec/limits.md.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec.structs import replace

from guardpool.policy.bounds import MAX_AMOUNT
from guardpool.policy.compile import CompiledLimit, CompiledPrice
from guardpool.policy.model import LimitStatus, Usage
from guardpool.policy.money import format_amount, to_micros
from guardpool.policy.runtime import PolicyMatch
from guardpool.store.base import CounterState, ReserveItem

# Every operation is one call; the host never has to say so.
CALLS = "calls"


class PlannedItem(msgspec.Struct, frozen=True):
    """A ReserveItem plus the limit it came from (for reporting, overruns and hooks)."""

    item: ReserveItem
    limit: CompiledLimit


def scope_key(limit: CompiledLimit, run_id: str, principal: str) -> str:
    if limit.scope == "run":
        return f"{limit.pattern}|run:{run_id}"
    if limit.scope == "principal":
        return f"{limit.pattern}|principal:{principal}"
    return f"{limit.pattern}|global"


def usage_amounts(usage: Usage | None, price: CompiledPrice | None) -> dict[str, int]:
    """The dimensions a Usage states, in store units (cost in micro-units).

    Dimensions the usage does not state are absent, so that the caller can tell
    "zero" from "unknown".
    """
    amounts: dict[str, int] = {CALLS: 1}
    if usage is None:
        return amounts
    if usage.tokens is not None:
        amounts["tokens"] = usage.tokens
    if usage.cost is not None:
        amounts["cost"] = to_micros(usage.cost)
    elif price is not None:
        priced = price.cost_micros(usage)
        if priced is not None:
            # 10^15 tokens at $10^9 per million is 10^24 micro-units: past any
            # limit, so charging the bound instead changes no decision and keeps
            # the store's bound (MAX_AMOUNT) from refusing the charge.
            amounts["cost"] = min(priced, MAX_AMOUNT)
    if usage.wall_ms is not None:
        amounts["wall_ms"] = usage.wall_ms
    amounts.update(usage.extra)
    return amounts


def merge_estimate(own: Usage | None, configured: Usage | None) -> Usage | None:
    """The operation's own estimate, completed field by field from ``[estimates]``."""
    if own is None:
        return configured
    if configured is None:
        return own
    return Usage(
        tokens=own.tokens if own.tokens is not None else configured.tokens,
        input_tokens=own.input_tokens if own.input_tokens is not None else configured.input_tokens,
        output_tokens=(
            own.output_tokens if own.output_tokens is not None else configured.output_tokens
        ),
        cost=own.cost if own.cost is not None else configured.cost,
        wall_ms=own.wall_ms if own.wall_ms is not None else configured.wall_ms,
        extra={**configured.extra, **own.extra},
    )


def plan_reservation(
    match: PolicyMatch, estimate: Usage | None, run_id: str, principal: str
) -> list[PlannedItem]:
    """One item per matching limit and dimension (``estimate=None`` and no configured
    estimate: nothing reserved, headroom demanded instead)."""
    if not match.limits:
        return []
    full_estimate = merge_estimate(estimate, match.estimate)
    amounts = usage_amounts(full_estimate, match.price)
    planned: list[PlannedItem] = []
    for limit in match.limits:
        key = scope_key(limit, run_id, principal)
        for dimension, value in limit.dimensions.items():
            amount = amounts.get(dimension)
            if limit.enforcement == "post-hoc":
                # Checked at settle: reserve nothing now, but refuse once the
                # counter already stands at or over its limit.
                amount, headroom = 0, 0
            elif amount is None:
                amount, headroom = 0, math.ceil(value * limit.margin)
            else:
                headroom = 0
            planned.append(
                PlannedItem(
                    ReserveItem(
                        key=key,
                        dimension=dimension,
                        limit=value,
                        amount=amount,
                        headroom=headroom,
                        window_ms=limit.window_ms,
                        check=limit.on_exceed == "deny",
                    ),
                    limit,
                )
            )
    return planned


class Plan(msgspec.Struct, frozen=True):
    """One operation's planned reservation, in the shapes check and settle use.

    Shared between checks with the same labels, run, principal and estimate
    (``Planner``): nothing here may be mutated.
    """

    planned: tuple[PlannedItem, ...]
    items: tuple[ReserveItem, ...]  # planned[i].item: what the store is handed
    reserve_usage: dict[str, int]  # the ``reserve`` audit event's usage
    # Per item: its LimitStatus with what does not depend on the counters filled in.
    statuses: tuple[LimitStatus, ...]
    # Per item, what ``quiet_statuses`` reads: (its status template, item.check, the
    # counter total at its warn_at mark (warn_at x limit, what ``crossed_warning``
    # computes) or None without a mark, item.amount).
    grant: tuple[tuple[LimitStatus, bool, float | None, int], ...]


# Plans remembered per Planner; keys hold run ids, which come from hosts: bounded.
_PLANS_KEPT = 4096


class Planner:
    """``plan_reservation`` remembered per (labels, run, principal, estimate).

    A host checks the same few label sets for the same run over and over; the
    items are immutable, so the plan is computed once and handed out again.
    """

    def __init__(self) -> None:
        self._plans: dict[tuple[Any, ...], Plan] = {}
        self._lock = threading.Lock()

    def plan(self, match: PolicyMatch, estimate: Usage | None, run_id: str, principal: str) -> Plan:
        key = (match.labels, run_id, principal, _estimate_key(estimate))
        found = self._plans.get(key)
        if found is not None:
            return found
        planned = tuple(plan_reservation(match, estimate, run_id, principal))
        statuses = tuple(limit_status(p, _blank(p.item), exceeded=False) for p in planned)
        made = Plan(
            planned=planned,
            items=tuple(p.item for p in planned),
            reserve_usage={f"{p.limit.pattern}:{p.item.dimension}": p.item.amount for p in planned},
            statuses=statuses,
            grant=tuple(
                (status, p.item.check, _mark(p), p.item.amount)
                for status, p in zip(statuses, planned, strict=True)
            ),
        )
        with self._lock:
            if len(self._plans) >= _PLANS_KEPT:
                # Oldest first (dicts keep insertion order).
                del self._plans[next(iter(self._plans))]
            self._plans[key] = made
        return made


def _blank(item: ReserveItem) -> CounterState:
    return CounterState(
        key=item.key, dimension=item.dimension, used=0, reserved=0, limit=item.limit
    )


def _mark(p: PlannedItem) -> float | None:
    warn_at = p.limit.warn_at
    if warn_at is None or p.item.limit <= 0:
        return None
    return warn_at * p.item.limit


def _estimate_key(u: Usage | None) -> tuple[Any, ...] | None:
    if u is None:
        return None
    extra = tuple(sorted(u.extra.items())) if u.extra else ()
    return (u.tokens, u.input_tokens, u.output_tokens, u.cost, u.wall_ms, extra)


def limit_status(planned: PlannedItem, state: CounterState, *, exceeded: bool) -> LimitStatus:
    """Every LimitStatus is built here (``quiet_statuses`` fills in copies of one)."""
    return LimitStatus(
        pattern=planned.limit.pattern,
        dimension=state.dimension,
        used=state.used,
        reserved=state.reserved,
        limit=state.limit,
        estimate=planned.item.amount,
        scope=planned.limit.scope,
        window=planned.limit.window,
        exceeded=exceeded,
    )


def quiet_statuses(plan: Plan, states: Sequence[CounterState]) -> tuple[LimitStatus, ...] | None:
    """The limit statuses of a granted reserve of ``plan`` when it has nothing to note,
    else None: no item that only warns stands over its limit, no item crossed its
    warn_at mark. Then the check records the statuses and the ``reserve`` event,
    and nothing else: the usual grant, in one pass over the items."""
    out = []
    for (template, check, mark, amount), state in zip(plan.grant, states, strict=True):
        used, reserved, limit = state.used, state.reserved, state.limit
        total = used + reserved
        if not check and total > limit:
            return None
        if mark is not None and total >= mark > total - amount:
            return None
        out.append(replace(template, used=used, reserved=reserved, limit=limit))
    return tuple(out)


def settled_statuses(plan: Plan, states: Sequence[CounterState]) -> tuple[LimitStatus, ...] | None:
    """The limit statuses after a settle of ``plan`` when no counter stands over its
    limit, else None (then each breach is audited, item by item). ``states`` must be
    in the plan's item order, as a store answers a settle of this plan's reservation;
    None too when they are not."""
    if len(states) != len(plan.planned):
        return None
    out = []
    for p, template, state in zip(plan.planned, plan.statuses, states, strict=True):
        used, limit = state.used, state.limit
        if used > limit or state.key != p.item.key or state.dimension != p.item.dimension:
            return None
        out.append(replace(template, used=used, reserved=state.reserved, limit=limit))
    return tuple(out)


def crossed_warning(item: ReserveItem, state: CounterState, warn_at: float | None) -> bool:
    """True when this reservation moved the counter across ``warn_at × limit``."""
    if warn_at is None or item.limit <= 0:
        return False
    threshold = warn_at * item.limit
    after = state.used + state.reserved
    return after >= threshold > after - item.amount


def describe_refusal(planned: PlannedItem, state: CounterState) -> str:
    item = planned.item
    unit = format_amount(item.dimension, state.used + state.reserved)
    cap = format_amount(item.dimension, item.limit)
    if state.used + state.reserved >= item.limit:
        return (
            f"limit {planned.limit.pattern} {item.dimension}: {unit} of {cap} already used "
            f"or reserved ({planned.limit.window} window, {planned.limit.scope} scope)"
        )
    if item.headroom and not item.amount:
        return (
            f"limit {planned.limit.pattern} {item.dimension}: {unit} of {cap} used, within the "
            f"{planned.limit.margin:.0%} safety margin (no estimate for this operation)"
        )
    return (
        f"limit {planned.limit.pattern} {item.dimension}: estimate "
        f"{format_amount(item.dimension, item.amount)} would exceed {cap} ({unit} used or reserved)"
    )
