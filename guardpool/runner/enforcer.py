"""The enforcer: guard verdicts and budgets combined into one audited decision.

    run.check(op)
      │ 1. input size   > max_input_bytes ───────────────────────────► deny
      │ 2. budgets      store.reserve(all matching limits, one atomic step)
      │                 refused / store down ─────────────────────────► deny
      │ 3. guards       regex banks in-process (RE2: linear time)
      │                 callables in the pool (killed at the deadline)
      │                 any deny ─────────────► release reservation ──► deny
      │ 4. ledger       one batch: check, verdicts, reserve, decision
      │                 write fails (on_failure=deny) ► release ──────► deny
      ▼
    Decision(allowed, action, reasons, verdicts, limits, id, input)

    run.settle(decision, usage, output)
      after-guards on the output (chained rewrites) ─► store.settle(actual) ─► ledger

Budgets are reserved *before* guards run so that an agent burning its budget
in a loop is refused without spending worker time; a guard deny then returns
the reservation. Every failure path ends in a deny (fail closed): a store
outage, a ledger that cannot be written, a guard timeout or crash (unless that
guard is configured fail-open), an unexpected exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from guardpool.audit.events import AuditEvent
from guardpool.audit.ledger import Ledger, LedgerWriteError
from guardpool.policy.labels import validate_label
from guardpool.policy.loader import Policy, load_policy
from guardpool.policy.model import Action, Decision, GuardVerdict, LimitStatus, Operation, Usage
from guardpool.policy.verdict import Verdict
from guardpool.runner import budget
from guardpool.runner.pool import GuardPool, JobResult
from guardpool.runner.verdicts import GuardResult, Phase, combine, failed_in_host, from_job
from guardpool.runner.verdicts import from_verdict as verdict_result
from guardpool.store import open_store
from guardpool.store.base import BudgetStore, CounterState, Expired, ReserveItem, StoreAnswer
from guardpool.store.errors import StoreUnavailable

if TYPE_CHECKING:
    from guardpool.policy.guards import CompiledGuard

log = logging.getLogger("guardpool")

HOOK_EVENTS = frozenset(
    {
        "decision",
        "limit_warning",
        "limit_exceeded",
        "guard_timeout",
        "guard_error",
        "guard_crash",
        "overrun",
        "reservation_expired",
        "audit_failure",
    }
)

# Settled decisions remembered for idempotent settle answers within this process.
_SETTLED_MEMORY = 4096


class HookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What a hook callback receives."""

    kind: str
    decision_id: str = ""
    run_id: str = ""
    principal: str = ""
    labels: tuple[str, ...] = ()
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class OperationDenied(Exception):
    """Raised by ``run.operation(op)`` when the check denies the operation."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__("; ".join(decision.reasons) or "operation denied")


class _Pending(msgspec.Struct):
    """What settle needs to know about a granted decision."""

    labels: tuple[str, ...]
    run_id: str
    principal: str
    started: float
    estimates: dict[str, int]


class Enforcer:
    """Checks operations against a policy; see the module docstring."""

    def __init__(
        self,
        policy: Policy,
        *,
        pool: GuardPool | None = None,
        store: BudgetStore | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.policy = policy
        cfg = policy.config
        self._own_pool = pool is None
        needs_pool = any(g.kind == "callable" for g in policy.guards.values())
        self.pool: GuardPool | None = pool
        if pool is None and needs_pool:
            self.pool = GuardPool.from_config(policy)
        self.store: BudgetStore = store if store is not None else open_store(cfg.store)
        self.ledger: Ledger = (
            ledger
            if ledger is not None
            else Ledger(cfg.audit.path, capture_input=cfg.audit.capture_input)
        )
        self._audit_fail_closed = cfg.audit.on_failure == "deny"
        self._ttl_ms = cfg.store.reservation_ttl_ms
        self._max_input = cfg.pool.max_input_bytes
        self._hooks: dict[str, list[Callable[[HookEvent], None]]] = {}
        self._pending: dict[str, _Pending] = {}
        self._settled: OrderedDict[str, Decision] = OrderedDict()
        self._lock = threading.Lock()
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
        self._append(
            [
                AuditEvent(
                    kind="policy_load",
                    reason=self.policy.source,
                    detail={"digest": self.policy.digest, "guards": len(self.policy.guards)},
                )
            ]
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
        if event not in HOOK_EVENTS:
            raise ValueError(
                f"unknown hook event {event!r}; known: {', '.join(sorted(HOOK_EVENTS))}"
            )
        self._hooks.setdefault(event, []).append(callback)

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
            self._append(self._audit_expired(expired))
        return expired

    # ------------------------------------------------------------------- check

    def check(self, op: Operation, run_id: str, principal: str) -> Decision:
        if self._closed:
            raise RuntimeError("the enforcer is closed")
        if not self._started:
            self.start()
        for label in op.labels:
            validate_label(label)
        decision_id = uuid.uuid4().hex
        started = time.monotonic()
        ctx = _Check(self, op, decision_id, run_id, principal)
        try:
            decision = ctx.decide(started)
        except Exception as exc:  # fail closed on anything unforeseen
            log.exception("guardpool: check %s failed", decision_id)
            ctx.release_quietly()
            decision = ctx.deny_decision([f"internal error: {exc}"])
            ctx.events.append(ctx.decision_event(decision))
            with contextlib.suppress(LedgerWriteError):
                self.ledger.append(ctx.events)
        ctx.notify("decision", action=decision.action)
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
        with self._lock:
            done = self._settled.get(decision_id)
            pending = self._pending.pop(decision_id, None)
        if done is not None:
            return done
        if pending is None:
            # Settled elsewhere (another process sharing the store) or unknown:
            # the store's idempotency decides; labels may come from the caller.
            source = decision if isinstance(decision, Decision) else None
            pending = _Pending(
                labels=tuple(labels) or (source.labels if source else ()),
                run_id=run_id or (source.run_id if source else ""),
                principal=principal or (source.principal if source else ""),
                started=time.monotonic(),
                estimates={},
            )
        result = _Settle(self, decision_id, pending, usage, output).run()
        with self._lock:
            self._settled[decision_id] = result
            while len(self._settled) > _SETTLED_MEMORY:
                self._settled.popitem(last=False)
        return result

    def release(self, decision: Decision | str) -> bool:
        decision_id = decision if isinstance(decision, str) else decision.id
        with self._lock:
            pending = self._pending.pop(decision_id, None)
        try:
            released = self.store.release(decision_id)
        except StoreUnavailable as exc:
            log.warning("guardpool: release %s failed: %s", decision_id, exc)
            return False
        if released:
            self._append(
                [
                    AuditEvent(
                        kind="release",
                        decision_id=decision_id,
                        run_id=pending.run_id if pending else "",
                        principal=pending.principal if pending else "",
                        labels=pending.labels if pending else (),
                    )
                ]
            )
        return released

    # --------------------------------------------------------------- internals

    def _remember(self, decision_id: str, pending: _Pending) -> None:
        with self._lock:
            self._pending[decision_id] = pending

    def _append(self, events: list[AuditEvent]) -> bool:
        """Write events; False (and an ``audit_failure`` hook) when the ledger fails."""
        try:
            self.ledger.append(events)
        except LedgerWriteError as exc:
            log.error("guardpool: audit ledger write failed: %s", exc)
            self._emit_raw(HookEvent(kind="audit_failure", detail={"error": str(exc)}))
            return False
        return True

    def _audit_expired(self, expired: Sequence[Expired]) -> list[AuditEvent]:
        """Audit events and hooks for expired reservations; forgets their pending state."""
        with self._lock:
            for e in expired:
                self._pending.pop(e.reservation_id, None)
        events = [
            AuditEvent(kind="expire", decision_id=e.reservation_id, usage=dict(e.charged))
            for e in expired
        ]
        for e in expired:
            self._emit_raw(
                HookEvent(
                    kind="reservation_expired",
                    decision_id=e.reservation_id,
                    detail={"charged": dict(e.charged)},
                )
            )
        return events

    def _emit_raw(self, event: HookEvent) -> None:
        for callback in self._hooks.get(event.kind, ()):
            try:
                callback(event)
            except Exception:  # a broken hook must not break enforcement
                log.exception("guardpool: hook %s raised", event.kind)

    def run_guards(
        self,
        phase: Phase,
        labels: Sequence[str],
        value: Any,
        run_id: str,
        principal: str,
    ) -> tuple[list[GuardResult], Any]:
        """Run the phase's guards; returns results (config order) and the final value.

        Before-guards run concurrently and the last rewrite (config order) wins;
        after-guards run in order, each seeing the previous one's rewrite.
        """
        guards = self.policy.guards_for(labels, phase)
        if phase == "after":
            results: list[GuardResult] = []
            for guard in guards:
                result = self._run_one(guard, value, labels, run_id, principal, phase)
                results.append(result)
                if result.has_rewrite:
                    value = result.rewrite
            return results, value
        futures: dict[int, Future[JobResult]] = {}
        done: dict[int, GuardResult] = {}
        for i, guard in enumerate(guards):
            if guard.kind == "callable":
                futures[i] = self._submit(guard, value, labels, run_id, principal, phase)
        for i, guard in enumerate(guards):
            if guard.kind != "callable":
                done[i] = self._run_regex(guard, value, phase)
        for i, future in futures.items():
            done[i] = from_job(guards[i], future.result(), phase)
        ordered = [done[i] for i in range(len(guards))]
        for result in ordered:
            if result.has_rewrite:
                value = result.rewrite
        return ordered, value

    def _run_one(
        self,
        guard: CompiledGuard,
        value: Any,
        labels: Sequence[str],
        run_id: str,
        principal: str,
        phase: Phase,
    ) -> GuardResult:
        if guard.kind == "callable":
            job = self._submit(guard, value, labels, run_id, principal, phase).result()
            return from_job(guard, job, phase)
        return self._run_regex(guard, value, phase)

    def _submit(
        self,
        guard: CompiledGuard,
        value: Any,
        labels: Sequence[str],
        run_id: str,
        principal: str,
        phase: Phase,
    ) -> Future[JobResult]:
        assert self.pool is not None  # a callable guard always brings a pool
        return self.pool.submit_guard(
            guard.spec.name,
            value,
            labels=tuple(labels),
            run_id=run_id,
            principal=principal,
            phase=phase,
            timeout_ms=guard.spec.timeout_ms,
        )

    def _run_regex(self, guard: CompiledGuard, value: Any, phase: Phase) -> GuardResult:
        # RE2 runs in linear time over an input already capped at
        # max_input_bytes, so a process hop (and its ~50 µs) buys nothing here.
        start = time.perf_counter()
        try:
            verdict = guard.evaluate(value, _NO_CONTEXT)
        except Exception as exc:
            return failed_in_host(guard, exc, phase)
        ms = (time.perf_counter() - start) * 1000
        if not isinstance(verdict, Verdict):  # pragma: no cover - regex banks return Verdicts
            return failed_in_host(guard, TypeError("regex guard returned no Verdict"), phase)
        return verdict_result(guard, verdict, ms, phase)


class _NoContext:
    """Regex banks never consult the context; this placeholder satisfies the protocol."""

    labels: tuple[str, ...] = ()
    run_id = ""
    principal = ""
    phase = "before"

    def remaining_ms(self) -> float:
        return float("inf")

    def regex(self, pattern: str) -> Any:
        raise RuntimeError("regex banks have no context")

    def guard(self, name: str, value: Any) -> Verdict:
        raise RuntimeError("regex banks have no context")


_NO_CONTEXT = _NoContext()


def _input_size(value: Any) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(msgspec.json.encode(value))


class _Scope:
    """Who and what one check or settle is about; stamps its audit events and hooks."""

    def __init__(
        self,
        enforcer: Enforcer,
        decision_id: str,
        run_id: str,
        principal: str,
        labels: tuple[str, ...],
    ) -> None:
        self.e = enforcer
        self.id = decision_id
        self.run_id = run_id
        self.principal = principal
        self.labels = labels

    def event(self, kind: str, **fields: Any) -> AuditEvent:
        return AuditEvent(
            kind=kind,
            run_id=self.run_id,
            principal=self.principal,
            labels=self.labels,
            decision_id=self.id,
            **fields,
        )

    def notify(self, kind: str, **detail: Any) -> None:
        if kind not in self.e._hooks:  # the hot path: most checks have no listener
            return
        self.e._emit_raw(
            HookEvent(
                kind=kind,
                decision_id=self.id,
                run_id=self.run_id,
                principal=self.principal,
                labels=self.labels,
                detail=detail,
            )
        )

    def notify_limit(self, kind: str, pattern: str, state: CounterState) -> None:
        self.notify(
            kind,
            pattern=pattern,
            dimension=state.dimension,
            used=state.used,
            reserved=state.reserved,
            limit=state.limit,
        )


class _Check(_Scope):
    """The bookkeeping of one check, so that every exit path can audit and release."""

    def __init__(
        self, enforcer: Enforcer, op: Operation, decision_id: str, run_id: str, principal: str
    ) -> None:
        super().__init__(enforcer, decision_id, run_id, principal, op.labels)
        self.op = op
        self.events: list[AuditEvent] = []
        self.reserved = False
        self.limits: tuple[LimitStatus, ...] = ()
        self.verdicts: tuple[GuardVerdict, ...] = ()

    def decide(self, started: float) -> Decision:
        e = self.e
        op = self.op
        self.events.append(self.event("check", **e.ledger.input_fields(op.input)))
        size = _input_size(op.input)
        if size > e._max_input:
            return self.finish(
                [f"input too large: {size} bytes > max_input_bytes {e._max_input}"], "deny"
            )
        planned = budget.plan_reservation(
            e.policy, op.labels, op.estimate, self.run_id, self.principal
        )
        reasons: list[str] = []
        warn = False
        if planned:
            try:
                result = e.store.reserve(self.id, [p.item for p in planned], e._ttl_ms)
            except StoreUnavailable as exc:
                return self.finish([f"budget store unavailable: {exc}"], "deny")
            self.events.extend(e._audit_expired(result.expired))
            refusals, warnings = self.read_reservation(planned, result)
            if not result.ok:
                return self.finish(refusals, "deny")
            self.reserved = True
            reasons.extend(warnings)
            warn = bool(warnings)
        results, value = e.run_guards("before", op.labels, op.input, self.run_id, self.principal)
        self.verdicts = tuple(r.verdict for r in results)
        for r in results:
            self.events.append(self.verdict_event(r))
            if r.effect != "allow":
                reasons.append(r.verdict.reason)
        action = combine([r.effect for r in results] + (["warn"] if warn else []))
        if action == "deny":
            self.release_quietly()
            return self.finish(reasons, "deny")
        return self.finish(reasons, action, value=value, started=started)

    def read_reservation(
        self, planned: list[budget.PlannedItem], result: StoreAnswer
    ) -> tuple[list[str], list[str]]:
        """Limit statuses, audit events and reasons from the store's answer."""
        refused = set(result.refused)
        statuses: list[LimitStatus] = []
        refusals: list[str] = []
        warnings: list[str] = []
        for i, (p, state) in enumerate(zip(planned, result.states, strict=True)):
            over = i in refused or (not p.item.check and state.used + state.reserved > state.limit)
            statuses.append(budget.limit_status(p, state, exceeded=over))
            if i in refused:
                reason = budget.describe_refusal(p, state)
                refusals.append(reason)
                self.events.append(
                    self.event(
                        "limit_breach",
                        reason=reason,
                        detail={"pattern": p.limit.pattern, "dimension": p.item.dimension},
                    )
                )
                self.notify_limit("limit_exceeded", p.limit.pattern, state)
            elif over:
                reason = (
                    f"limit {p.limit.pattern} {p.item.dimension} exceeded "
                    f"({state.used + state.reserved} of {state.limit}); allowed (on_exceed=warn)"
                )
                warnings.append(reason)
                self.events.append(self.event("warning", reason=reason))
                self.notify_limit("limit_exceeded", p.limit.pattern, state)
            elif result.ok and budget.crossed_warning(p.item, state, p.limit.warn_at):
                reason = (
                    f"limit {p.limit.pattern} {p.item.dimension} passed "
                    f"{p.limit.warn_at:.0%} ({state.used + state.reserved} of {state.limit})"
                )
                self.events.append(self.event("warning", reason=reason))
                self.notify_limit("limit_warning", p.limit.pattern, state)
        self.limits = tuple(statuses)
        if result.ok:
            self.events.append(
                self.event(
                    "reserve",
                    usage={f"{p.limit.pattern}:{p.item.dimension}": p.item.amount for p in planned},
                )
            )
        return refusals, warnings

    def verdict_event(self, r: GuardResult) -> AuditEvent:
        v = r.verdict
        if v.outcome in ("timeout", "error"):
            hook = "guard_timeout" if v.outcome == "timeout" else "guard_error"
            if r.job is not None and r.job.outcome == "crash":
                hook = "guard_crash"
            self.notify(hook, guard=v.guard, reason=v.reason)
        detail: dict[str, Any] = {"effect": r.effect, "phase": v.phase}
        if r.job is not None:
            detail.update(cpu_ms=r.job.cpu_ms, job=r.job.outcome, limit=r.job.limit)
            if r.job.signal is not None:
                detail["signal"] = r.job.signal
        kind = "verdict"
        if r.job is not None and r.job.outcome in ("timeout", "crash"):
            kind = r.job.outcome
        return self.event(
            kind, guard=v.guard, outcome=v.outcome, reason=v.reason, duration_ms=v.ms, detail=detail
        )

    def finish(
        self,
        reasons: list[str],
        action: Action,
        *,
        value: Any = None,
        started: float | None = None,
    ) -> Decision:
        decision = Decision(
            id=self.id,
            allowed=action != "deny",
            action=action,
            reasons=tuple(reasons),
            verdicts=self.verdicts,
            limits=self.limits,
            input=value if action != "deny" else None,
            run_id=self.run_id,
            principal=self.principal,
            labels=self.op.labels,
        )
        self.events.append(self.decision_event(decision))
        if not self.e._append(self.events) and self.e._audit_fail_closed:
            self.release_quietly()
            return self.deny_decision(
                ["audit ledger unavailable: the decision could not be recorded"]
            )
        if decision.allowed and self.reserved:
            self.e._remember(
                self.id,
                _Pending(
                    labels=self.op.labels,
                    run_id=self.run_id,
                    principal=self.principal,
                    started=started if started is not None else time.monotonic(),
                    estimates={s.dimension: s.estimate for s in self.limits},
                ),
            )
        return decision

    def deny_decision(self, reasons: list[str]) -> Decision:
        return Decision(
            id=self.id,
            allowed=False,
            action="deny",
            reasons=tuple(reasons),
            verdicts=self.verdicts,
            limits=self.limits,
            run_id=self.run_id,
            principal=self.principal,
            labels=self.op.labels,
        )

    def decision_event(self, decision: Decision) -> AuditEvent:
        return self.event("decision", outcome=decision.action, reason="; ".join(decision.reasons))

    def release_quietly(self) -> None:
        if not self.reserved:
            return
        self.reserved = False
        try:
            self.e.store.release(self.id)
        except StoreUnavailable:
            # The reservation expires at its TTL and is charged at its estimate:
            # conservative, never an overspend.
            log.warning("guardpool: could not release %s; it will expire", self.id)


class _Settle(_Scope):
    """One settle: after-guards on the output, actual usage charged, audit."""

    def __init__(
        self, enforcer: Enforcer, decision_id: str, pending: _Pending, usage: Usage, output: Any
    ) -> None:
        super().__init__(enforcer, decision_id, pending.run_id, pending.principal, pending.labels)
        self.p = pending
        self.usage = usage
        self.output = output

    def run(self) -> Decision:
        e, p = self.e, self.p
        events: list[AuditEvent] = []
        reasons: list[str] = []
        effects: list[Action] = []
        verdicts: tuple[GuardVerdict, ...] = ()
        value = self.output
        if self.output is not None and p.labels:
            results, value = e.run_guards("after", p.labels, self.output, p.run_id, p.principal)
            verdicts = tuple(r.verdict for r in results)
            for r in results:
                events.append(
                    self.event(
                        "verdict",
                        guard=r.verdict.guard,
                        outcome=r.verdict.outcome,
                        reason=r.verdict.reason,
                        duration_ms=r.verdict.ms,
                        detail={"effect": r.effect, "phase": "after"},
                    )
                )
                effects.append(r.effect)
                if r.effect != "allow":
                    reasons.append(r.verdict.reason)
        price = e.policy.price_for(p.labels) if p.labels else None
        actual = budget.usage_amounts(self.usage, price)
        if "wall_ms" not in actual:
            actual["wall_ms"] = int((time.monotonic() - p.started) * 1000)
        limits: tuple[LimitStatus, ...] = ()
        try:
            settled = e.store.settle(self.id, actual)
        except StoreUnavailable as exc:
            # The reservation stays and expires at its estimate; say so loudly.
            reasons.append(f"budget store unavailable at settle: {exc}")
            effects.append("warn")
            settled = None
        if settled is not None:
            events.extend(e._audit_expired(settled.expired))
        if settled is not None and settled.ok:
            events.append(self.event("settle", usage=actual))
            for dim, amount in actual.items():
                estimate = p.estimates.get(dim, 0)
                if estimate and amount > estimate:
                    events.append(
                        self.event(
                            "overrun",
                            reason=f"{dim}: actual {amount} > estimate {estimate}",
                            detail={"dimension": dim, "estimate": estimate, "actual": amount},
                        )
                    )
                    self.notify("overrun", dimension=dim, estimate=estimate, actual=amount)
            limits = self.breaches(settled.states, events, reasons, effects)
        action = combine(effects)
        decision = Decision(
            id=self.id,
            allowed=action != "deny",
            action=action,
            reasons=tuple(reasons),
            verdicts=verdicts,
            limits=limits,
            input=value if action != "deny" else None,
            run_id=p.run_id,
            principal=p.principal,
            labels=p.labels,
        )
        events.append(
            self.event(
                "decision", outcome=action, reason="; ".join(reasons), detail={"phase": "after"}
            )
        )
        if not e._append(events) and e._audit_fail_closed and decision.allowed:
            return msgspec.structs.replace(
                decision,
                allowed=False,
                action="deny",
                input=None,
                reasons=(*reasons, "audit ledger unavailable: the settle could not be recorded"),
            )
        return decision

    def breaches(
        self,
        states: Sequence[Any],
        events: list[AuditEvent],
        reasons: list[str],
        effects: list[Action],
    ) -> tuple[LimitStatus, ...]:
        """Post-hoc limits are checked here, against the actual usage just charged."""
        by_key = {(s.key, s.dimension): s for s in states}
        statuses: list[LimitStatus] = []
        for limit in self.e.policy.limits_for(self.p.labels):
            key = budget.scope_key(limit, self.p.run_id, self.p.principal)
            for dim in limit.dimensions:
                state = by_key.get((key, dim))
                if state is None:
                    continue
                over = state.used > state.limit
                item = ReserveItem(key=key, dimension=dim, limit=state.limit, amount=0)
                statuses.append(
                    budget.limit_status(budget.PlannedItem(item, limit), state, exceeded=over)
                )
                if not over:
                    continue
                reason = f"limit {limit.pattern} {dim}: {state.used} of {state.limit} used"
                if limit.enforcement == "post-hoc" and limit.on_exceed == "deny":
                    reasons.append(f"post-hoc {reason}")
                    effects.append("deny")
                events.append(
                    self.event(
                        "limit_breach",
                        reason=reason,
                        detail={
                            "pattern": limit.pattern,
                            "dimension": dim,
                            "enforcement": limit.enforcement,
                        },
                    )
                )
                self.notify_limit("limit_exceeded", limit.pattern, state)
        return tuple(statuses)


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
