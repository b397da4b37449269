"""What the pool hands back: job results, statistics, its state, and ``PoolBroken``.

Kept apart from the machinery so that callers (the enforcer, verdict mapping) can
import the types without pulling in the manager.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Outcome = Literal["ok", "timeout", "error", "crash"]
LimitName = Literal["", "wall", "cpu", "memory", "input"]
# starting: zygote and first workers on their way; running: serving; healing: the
# zygote died and a new one is being started (jobs wait, answered by their deadline);
# broken: a configuration that cannot work (see PoolBroken); stopped: shut down.
PoolState = Literal["starting", "running", "healing", "broken", "stopped"]


class JobResult(msgspec.Struct, frozen=True, kw_only=True):
    """How one job ended. ``value`` is the function's result (a ``Verdict`` for guard jobs)."""

    outcome: Outcome
    value: Any = None
    error: str = ""
    limit: LimitName = ""
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    worker_pid: int = 0


class PoolStats(msgspec.Struct, frozen=True, kw_only=True):
    workers: int  # live workers (spawned and not yet dead)
    busy: int
    queued: int
    spawned: int
    killed: int  # killed by the pool at a deadline
    crashed: int
    recycled: int
    completed: int
    timeouts: int
    refused: int  # input too large / not serialisable
    state: PoolState = "running"
    zygote_restarts: int = 0
    fork_failures: int = 0  # fork() refused (EAGAIN/ENOMEM) and retried by the zygote


class PoolBroken(RuntimeError):
    """The pool cannot serve and will not heal: a configuration error, not a passing fault.

    Raised by ``start``/``submit`` and set on every job pending when the pool broke,
    so a caller fails closed. ``reason`` says what is wrong (a preload that does not
    import, a user that does not exist, workers that die before they are ready, a
    zygote that keeps dying at start-up).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"guardpool: pool is broken: {reason}")
        self.reason = reason
