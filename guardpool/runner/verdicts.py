"""Guard outcomes to effects, and the combination rule.

Each guard ends in one outcome (allow, deny, warn, timeout, error). Timeouts and
errors are turned into an *effect* by the guard's ``on_timeout`` / ``on_error``
("deny" by default; privileged guards always deny, whatever the config says —
the loader already refuses a privileged guard that asks to fail open, this is
the second lock). A fail-open effect is a ``warn``: the operation is allowed,
but the host and the ledger see why.

Combination (design §5): any deny wins over warn, warn over allow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from guardpool.policy.model import Action, GuardVerdict
from guardpool.policy.verdict import Verdict

if TYPE_CHECKING:
    from guardpool.policy.guards import CompiledGuard
    from guardpool.runner.pool import JobResult

Phase = Literal["before", "after"]


class GuardResult:
    """One guard's verdict for the decision, its effect, and a rewrite if any."""

    __slots__ = ("effect", "has_rewrite", "job", "rewrite", "verdict")

    def __init__(
        self,
        verdict: GuardVerdict,
        effect: Action,
        *,
        rewrite: Any = None,
        has_rewrite: bool = False,
        job: JobResult | None = None,
    ) -> None:
        self.verdict = verdict
        self.effect = effect
        self.rewrite = rewrite
        self.has_rewrite = has_rewrite
        self.job = job


def from_verdict(guard: CompiledGuard, verdict: Verdict, ms: float, phase: Phase) -> GuardResult:
    """A guard that returned normally."""
    name = guard.spec.name
    if verdict.action == "rewrite":
        return GuardResult(
            GuardVerdict(
                guard=name,
                outcome="allow",
                reason=verdict.reason,
                ms=ms,
                phase=phase,
                rewritten=True,
            ),
            "allow",
            rewrite=verdict.value,
            has_rewrite=True,
        )
    reason = verdict.reason
    if verdict.action == "deny" and not reason:
        reason = guard.spec.reason or f"denied by guard {name}"
    return GuardResult(
        GuardVerdict(guard=name, outcome=verdict.action, reason=reason, ms=ms, phase=phase),
        verdict.action,
    )


def from_job(guard: CompiledGuard, job: JobResult, phase: Phase) -> GuardResult:
    """A callable guard's pool result."""
    if job.outcome == "ok" and isinstance(job.value, Verdict):
        result = from_verdict(guard, job.value, job.wall_ms, phase)
        result.job = job
        return result
    if job.outcome == "timeout":
        what = "CPU budget" if job.limit == "cpu" else "deadline"
        reason = f"guard {guard.spec.name} exceeded its {what} ({guard.spec.timeout_ms} ms)"
        return _failed(guard, "timeout", reason, job, phase)
    if job.outcome == "crash":
        how = f"signal {job.signal}" if job.signal is not None else f"exit code {job.exit_code}"
        reason = f"guard {guard.spec.name} crashed its worker ({how})"
        return _failed(guard, "error", reason, job, phase)
    detail = job.error or f"returned {type(job.value).__name__}, expected Verdict or bool"
    return _failed(guard, "error", f"guard {guard.spec.name} failed: {detail}", job, phase)


def _failed(
    guard: CompiledGuard,
    outcome: Literal["timeout", "error"],
    reason: str,
    job: JobResult | None,
    phase: Phase,
) -> GuardResult:
    policy = guard.spec.on_timeout if outcome == "timeout" else guard.spec.on_error
    fail_open = policy == "allow" and not guard.spec.privileged
    if fail_open:
        reason = f"{reason}; allowed (on_{outcome}=allow)"
    ms = job.wall_ms if job is not None else 0.0
    return GuardResult(
        GuardVerdict(guard=guard.spec.name, outcome=outcome, reason=reason, ms=ms, phase=phase),
        "warn" if fail_open else "deny",
        job=job,
    )


def failed_in_host(guard: CompiledGuard, exc: BaseException, phase: Phase) -> GuardResult:
    """A regex-bank guard that raised in the host (should not happen; fail per on_error)."""
    return _failed(guard, "error", f"guard {guard.spec.name} failed: {exc}", None, phase)


def combine(effects: list[Action]) -> Action:
    if "deny" in effects:
        return "deny"
    if "warn" in effects:
        return "warn"
    return "allow"
