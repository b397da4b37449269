"""``WorkerContext``: what a callable guard sees as ``ctx`` inside a worker.

Nested guards (``ctx.guard(name, value)``) run in the same process and share the
outer job's deadline: the nested deadline is ``min(outer remaining, nested
timeout_ms)``. It is enforced in-process with ``ITIMER_REAL``/``SIGALRM`` raising
``GuardTimeout`` (a ``BaseException``, so a guard's ``except Exception`` cannot
swallow it). If the nested guard is stuck in C code that never returns to the
interpreter, the host's SIGKILL at the outer deadline still ends the job.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from guardpool.policy.verdict import Verdict, normalize

if TYPE_CHECKING:
    from guardpool.policy.guards import CompiledGuard


class GuardTimeout(BaseException):
    """Raised by SIGALRM when the innermost nested-guard deadline passes."""

    def __init__(self, deadline: float) -> None:
        super().__init__(f"nested guard deadline passed ({deadline:.3f})")
        self.deadline = deadline


# Innermost last. A nested deadline is never later than its parent's, so the
# innermost is always the earliest and is the only one the timer needs to track.
_deadlines: list[float] = []
_regex_cache: dict[tuple[str, int], Any] = {}


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if not _deadlines:
        return
    remaining = _deadlines[-1] - time.monotonic()
    if remaining > 0.0005:  # early delivery (timer rounding): re-arm rather than raise
        signal.setitimer(signal.ITIMER_REAL, remaining)
        return
    raise GuardTimeout(_deadlines[-1])


def install_alarm_handler() -> None:
    signal.signal(signal.SIGALRM, _on_alarm)


def _arm(deadline: float | None) -> None:
    if deadline is None:
        signal.setitimer(signal.ITIMER_REAL, 0)
    else:
        signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 1e-6))


class WorkerContext:
    """The ``GuardContext`` protocol, implemented inside a worker process."""

    __slots__ = ("_deadline", "_guards", "_regex_max_mem", "labels", "phase", "principal", "run_id")

    def __init__(
        self,
        guards: Mapping[str, CompiledGuard],
        *,
        labels: tuple[str, ...],
        run_id: str,
        principal: str,
        phase: str,
        deadline: float,
        regex_max_mem: int,
    ) -> None:
        self._guards = guards
        self._deadline = deadline
        self._regex_max_mem = regex_max_mem
        self.labels = labels
        self.run_id = run_id
        self.principal = principal
        self.phase = phase

    def remaining_ms(self) -> float:
        return max(0.0, (self._deadline - time.monotonic()) * 1000.0)

    def regex(self, pattern: str) -> Any:
        """A compiled RE2 pattern, cached for the worker's lifetime."""
        key = (pattern, self._regex_max_mem)
        compiled = _regex_cache.get(key)
        if compiled is None:
            from guardpool.policy.regex import compile_pattern

            compiled = compile_pattern(pattern, self._regex_max_mem)
            _regex_cache[key] = compiled
        return compiled

    def guard(self, name: str, value: Any) -> Verdict:
        """Run guard ``name`` on ``value`` here, under min(outer remaining, its timeout)."""
        guard = self._guards.get(name)
        if guard is None:
            raise LookupError(f"ctx.guard: unknown guard {name!r}")
        spec = guard.spec
        timeout_ms = (
            spec.timeout_ms if spec.timeout_ms is not None else 1000
        )  # compiled: never None
        deadline = min(self._deadline, time.monotonic() + timeout_ms / 1000.0)
        nested = WorkerContext(
            self._guards,
            labels=self.labels,
            run_id=self.run_id,
            principal=self.principal,
            phase=self.phase,
            deadline=deadline,
            regex_max_mem=self._regex_max_mem,
        )
        _deadlines.append(deadline)
        _arm(deadline)
        try:
            result = guard.evaluate(value, nested)
        except GuardTimeout as exc:
            if exc.deadline != deadline:  # an enclosing guard's deadline: not ours to handle
                raise
            return _failed(guard, "timeout", f"nested guard {name} timed out")
        except Exception as exc:
            return _failed(guard, "error", f"nested guard {name} failed: {exc}")
        finally:
            _deadlines.pop()
            _arm(_deadlines[-1] if _deadlines else None)
        verdict = normalize(result)
        if verdict is None:
            return _failed(
                guard,
                "error",
                f"nested guard {name} returned {type(result).__name__}, expected Verdict or bool",
            )
        return verdict


def _failed(guard: CompiledGuard, outcome: str, reason: str) -> Verdict:
    """Deny, unless the nested guard is configured fail-open (then a warn, never silent)."""
    spec = guard.spec
    policy = spec.on_timeout if outcome == "timeout" else spec.on_error
    if policy == "allow" and not spec.privileged:
        return Verdict.warn(f"{reason}; allowed (on_{outcome}=allow)")
    return Verdict.deny(reason)
