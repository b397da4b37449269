"""The hook bus: host callbacks for things worth reacting to (``enforcer.on(kind, cb)``).

Check, settle and the audit sink call ``bus.emit(kind, scope, **detail)``; with
no listener for ``kind`` that returns at once, so most checks build no event.
A callback that raises is logged and ignored: a broken hook must not break
enforcement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from guardpool.runner.scope import Scope

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


class HookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What a hook callback receives."""

    kind: str
    decision_id: str = ""
    run_id: str = ""
    principal: str = ""
    labels: tuple[str, ...] = ()
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


Callback = Callable[[HookEvent], None]


class HookBus:
    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callback]] = {}

    def on(self, kind: str, callback: Callback) -> None:
        """Call ``callback(HookEvent)`` on every ``kind`` (see HOOK_EVENTS)."""
        if kind not in HOOK_EVENTS:
            raise ValueError(
                f"unknown hook event {kind!r}; known: {', '.join(sorted(HOOK_EVENTS))}"
            )
        self._callbacks.setdefault(kind, []).append(callback)

    def wants(self, kind: str) -> bool:
        """True when a callback listens to ``kind`` (skip building its detail otherwise)."""
        return kind in self._callbacks

    def emit(self, kind: str, scope: Scope | None = None, **detail: Any) -> None:
        callbacks = self._callbacks.get(kind)
        if not callbacks:  # the hot path: most checks have no listener
            return
        if scope is None:
            event = HookEvent(kind=kind, detail=detail)
        else:
            event = HookEvent(
                kind=kind,
                decision_id=scope.decision_id,
                run_id=scope.run_id,
                principal=scope.principal,
                labels=scope.labels,
                detail=detail,
            )
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("guardpool: hook %s raised", kind)
