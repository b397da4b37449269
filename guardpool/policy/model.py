"""The host-facing data model: Operation, Usage, Decision.

Money is never a float: ``Usage.cost`` is a ``Decimal`` (strings such as
``"0.0031"`` or ``"$0.0031"`` are accepted). Budgets count cost in integer
micro-units; ``LimitStatus`` values for the ``cost`` dimension are micro-units
(see ``guardpool.policy.money``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

import msgspec

from guardpool.policy.money import parse_money

Action = Literal["allow", "deny", "ask", "warn"]
Outcome = Literal["allow", "deny", "ask", "warn", "timeout", "error"]


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What an operation used, or is expected to use.

    ``tokens`` is the total; hosts that know the split give ``input_tokens`` and
    ``output_tokens`` too (prices apply per side). ``extra`` holds custom named
    dimensions (integers) declared in ``[limits]``.
    """

    tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: Decimal | None = None
    wall_ms: int | None = None
    extra: dict[str, int] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cost is not None:
            self.cost = parse_money(self.cost)
        for name in ("tokens", "input_tokens", "output_tokens", "wall_ms"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"Usage.{name} must be an integer >= 0, not {v!r}")
        if self.tokens is None and self.input_tokens is not None and self.output_tokens is not None:
            self.tokens = self.input_tokens + self.output_tokens
        for k, v in self.extra.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"Usage.extra[{k!r}] must be an integer >= 0, not {v!r}")


class Operation(msgspec.Struct, kw_only=True):
    """One operation the host is about to perform.

    ``labels`` are colon-segmented (``exe:llm:gpt-4o``, ``op:cmd:git:push``);
    ``input`` is what the guards inspect (text, bytes or JSON-like data).
    """

    labels: tuple[str, ...]
    input: Any = ""
    estimate: Usage | None = None

    def __post_init__(self) -> None:
        if isinstance(self.labels, str):
            self.labels = (self.labels,)
        if not self.labels:
            raise ValueError("Operation.labels must name at least one label")


class GuardVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """One guard's outcome in a decision."""

    guard: str
    outcome: Outcome
    reason: str = ""
    ms: float = 0.0
    phase: Literal["before", "after"] = "before"
    rewritten: bool = False


class LimitStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One matching limit and dimension at decision time (cost in micro-units)."""

    pattern: str
    dimension: str
    used: int
    reserved: int
    limit: int
    estimate: int = 0
    scope: str = "run"
    window: str = "run"
    exceeded: bool = False


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a check (or the result of a settle's after-guards)."""

    id: str
    allowed: bool
    action: Action
    reasons: tuple[str, ...] = ()
    verdicts: tuple[GuardVerdict, ...] = ()
    limits: tuple[LimitStatus, ...] = ()
    input: Any = None
    run_id: str = ""
    principal: str = ""
    labels: tuple[str, ...] = ()
