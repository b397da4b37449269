"""The value a guard returns.

A callable guard returns a ``Verdict`` or a bool (``True`` allow, ``False``
deny); anything else, ``None`` included, is an ``error`` outcome, because a guard
that forgot to return is a bug, not an approval.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

VerdictAction = Literal["allow", "deny", "ask", "warn", "rewrite"]


class Verdict(msgspec.Struct, frozen=True, tag="verdict"):
    action: VerdictAction
    reason: str = ""
    value: Any = None

    @classmethod
    def allow(cls) -> Verdict:
        return cls("allow")

    @classmethod
    def deny(cls, reason: str) -> Verdict:
        return cls("deny", reason)

    @classmethod
    def ask(cls, reason: str) -> Verdict:
        """A human must approve the operation before it runs (``run.approve``)."""
        return cls("ask", reason)

    @classmethod
    def warn(cls, reason: str) -> Verdict:
        return cls("warn", reason)

    @classmethod
    def rewrite(cls, value: Any, reason: str = "rewritten") -> Verdict:
        return cls("rewrite", reason, value)


def normalize(result: object) -> Verdict | None:
    """A guard's return value as a Verdict, or None when it is not a valid one."""
    if isinstance(result, Verdict):
        return result
    if result is True:
        return Verdict.allow()
    if result is False:
        return Verdict.deny("denied by guard")
    return None
