"""Guard outcomes to effects, the combination rule, and the one Decision builder.

    Verdict (a guard returned) ─┐
    JobResult (the pool) ───────┼─► GuardResult ─► effect ─► combine(effects) ─► decide(...)
    exception (in the host) ────┘      (the only guard shape after the pool)

Each guard ends in one outcome (allow, deny, warn, timeout, error). Timeouts and
errors are turned into an *effect* by the guard's ``on_timeout`` / ``on_error``
("deny" by default; privileged guards always deny, whatever the config says —
the loader already refuses a privileged guard that asks to fail open, this is
the second lock). A fail-open effect is a ``warn``: the operation is allowed,
but the host and the ledger see why.

Combination (design §5): the strongest effect in ``PRECEDENCE`` wins:
deny > ask > warn > allow. ``ask`` is not in ``ALLOWING``: the operation waits
for a human (``run.approve`` / ``run.reject``), and its decision keeps the input
so that the human can see what they approve.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from guardpool.policy.model import Action, Decision, GuardVerdict, LimitStatus
from guardpool.policy.verdict import Verdict

if TYPE_CHECKING:
    from guardpool.policy.guards import CompiledGuard
    from guardpool.runner.pool import JobResult
    from guardpool.runner.scope import Scope

Phase = Literal["before", "after"]
# How a guard's run is audited: an answer, or the pool's timeout / worker crash.
RunKind = Literal["verdict", "timeout", "crash"]

# Strongest first.
PRECEDENCE: tuple[Action, ...] = ("deny", "ask", "warn", "allow")
_RANK = {action: i for i, action in enumerate(PRECEDENCE)}
# Effects under which the operation may run.
ALLOWING: frozenset[Action] = frozenset({"allow", "warn"})


class GuardResult(msgspec.Struct, frozen=True, kw_only=True):
    """One guard's verdict for the decision, its effect, a rewrite if any, audit detail."""

    verdict: GuardVerdict
    effect: Action
    rewrite: Any = None
    has_rewrite: bool = False
    kind: RunKind = "verdict"
    job: dict[str, Any] = {}  # cpu_ms, job outcome, limit, signal: for the ledger


def combine(effects: Iterable[Action]) -> Action:
    """The strongest effect; ``allow`` when there is none."""
    if type(effects) is list and effects.count("allow") == len(effects):
        return "allow"  # the usual answer, in C (an unknown effect still takes the loop)
    strongest = len(PRECEDENCE) - 1
    for effect in effects:
        rank = _RANK[effect]
        if rank < strongest:
            strongest = rank
    return PRECEDENCE[strongest]


def decide(
    scope: Scope,
    action: Action,
    reasons: Sequence[str],
    verdicts: Sequence[GuardVerdict] = (),
    limits: Sequence[LimitStatus] = (),
    value: Any = None,
) -> Decision:
    """Every Decision is built here. A deny carries no input; an ask keeps it for review."""
    allowed = action in ALLOWING
    return Decision(
        id=scope.decision_id,
        allowed=allowed,
        action=action,
        reasons=tuple(reasons),
        verdicts=tuple(verdicts),
        limits=tuple(limits),
        input=value if allowed or action == "ask" else None,
        run_id=scope.run_id,
        principal=scope.principal,
        labels=scope.labels,
    )


def from_verdict(
    guard: CompiledGuard,
    verdict: Verdict,
    ms: float,
    phase: Phase,
    job: dict[str, Any] | None = None,
) -> GuardResult:
    """A guard that returned normally."""
    name = guard.spec.name
    if verdict.action == "rewrite":
        return GuardResult(
            verdict=GuardVerdict(
                guard=name,
                outcome="allow",
                reason=verdict.reason,
                ms=ms,
                phase=phase,
                rewritten=True,
            ),
            effect="allow",
            rewrite=verdict.value,
            has_rewrite=True,
            job=job or {},
        )
    reason = verdict.reason
    if verdict.action == "deny" and not reason:
        reason = guard.spec.reason or f"denied by guard {name}"
    return GuardResult(
        verdict=GuardVerdict(guard=name, outcome=verdict.action, reason=reason, ms=ms, phase=phase),
        effect=verdict.action,
        job=job or {},
    )


def from_job(guard: CompiledGuard, job: JobResult, phase: Phase) -> GuardResult:
    """A callable guard's pool result: the pool's shape ends here."""
    detail: dict[str, Any] = {"cpu_ms": job.cpu_ms, "job": job.outcome, "limit": job.limit}
    if job.signal is not None:
        detail["signal"] = job.signal
    if job.outcome == "ok" and isinstance(job.value, Verdict):
        return from_verdict(guard, job.value, job.wall_ms, phase, detail)
    name = guard.spec.name
    if job.outcome == "timeout":
        what = "CPU budget" if job.limit == "cpu" else "deadline"
        reason = f"guard {name} exceeded its {what} ({guard.spec.timeout_ms} ms)"
        return _failed(guard, "timeout", reason, job.wall_ms, phase, "timeout", detail)
    if job.outcome == "crash":
        how = f"signal {job.signal}" if job.signal is not None else f"exit code {job.exit_code}"
        reason = f"guard {name} crashed its worker ({how})"
        return _failed(guard, "error", reason, job.wall_ms, phase, "crash", detail)
    why = job.error or f"returned {type(job.value).__name__}, expected Verdict or bool"
    return _failed(
        guard, "error", f"guard {name} failed: {why}", job.wall_ms, phase, "verdict", detail
    )


def failed_in_host(guard: CompiledGuard, exc: BaseException, phase: Phase) -> GuardResult:
    """A regex-bank guard that raised in the host (should not happen; fail per on_error)."""
    reason = f"guard {guard.spec.name} failed: {exc}"
    return _failed(guard, "error", reason, 0.0, phase, "verdict", {})


def _failed(
    guard: CompiledGuard,
    outcome: Literal["timeout", "error"],
    reason: str,
    ms: float,
    phase: Phase,
    kind: RunKind,
    job: dict[str, Any],
) -> GuardResult:
    policy = guard.spec.on_timeout if outcome == "timeout" else guard.spec.on_error
    fail_open = policy == "allow" and not guard.spec.privileged
    if fail_open:
        reason = f"{reason}; allowed (on_{outcome}=allow)"
    return GuardResult(
        verdict=GuardVerdict(
            guard=guard.spec.name, outcome=outcome, reason=reason, ms=ms, phase=phase
        ),
        effect="warn" if fail_open else "deny",
        kind=kind,
        job=job,
    )
