"""Callable guards used by the enforcer tests (imported in real worker processes)."""

from __future__ import annotations

import time
from typing import Any

from guardpool import Verdict


def allow(value: Any, ctx: Any) -> Verdict:
    return Verdict.allow()


def deny_secrets(value: Any, ctx: Any) -> Verdict | bool:
    if "secret" in str(value):
        return Verdict.deny("mentions a secret")
    return True


def warn_long(value: Any, ctx: Any) -> Verdict:
    if len(str(value)) > 20:
        return Verdict.warn("long input")
    return Verdict.allow()


def redact(value: Any, ctx: Any) -> Verdict:
    return Verdict.rewrite(str(value).replace("password", "********"))


def shout(value: Any, ctx: Any) -> Verdict:
    return Verdict.rewrite(str(value).upper())


def hang(value: Any, ctx: Any) -> Verdict:
    time.sleep(60)
    return Verdict.allow()


def boom(value: Any, ctx: Any) -> Verdict:
    raise RuntimeError("guard exploded")


def forgets_to_return(value: Any, ctx: Any) -> None:
    return None


def nested(value: Any, ctx: Any) -> Verdict:
    """Delegates to the regex guard ``no-keys`` through ctx.guard."""
    return ctx.guard("no-keys", value)  # type: ignore[no-any-return]


def sees_context(value: Any, ctx: Any) -> Verdict:
    if ctx.run_id == "forbidden-run" or "op:cmd:rm" in ctx.labels:
        return Verdict.deny(f"run {ctx.run_id} principal {ctx.principal}")
    return Verdict.allow()


def crash(value: Any, ctx: Any) -> Verdict:
    """Kills its own worker, as a segfault in a C extension would."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return Verdict.allow()


def nap(value: Any, ctx: Any) -> Verdict:
    """Sleeps 0.3 s (no CPU), then allows."""
    time.sleep(0.3)
    return Verdict.allow()
