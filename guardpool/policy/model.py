"""The host-facing data model: Operation, Usage, Decision.

Money is never a float: ``Usage.cost`` is a ``Decimal`` (strings such as
``"0.0031"`` or ``"$0.0031"`` are accepted). Budgets count cost in integer
micro-units; ``LimitStatus`` values for the ``cost`` dimension are micro-units
(see ``guardpool.policy.money``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

from guardpool.policy.bounds import MAX_AMOUNT, check_amount
from guardpool.policy.labels import validate_labels
from guardpool.policy.money import parse_money

Action = Literal["allow", "deny", "ask", "warn"]
Outcome = Literal["allow", "deny", "ask", "warn", "timeout", "error"]

#: An amount of any dimension; the bound is enforced when decoding (HTTP,
#: config) and again in ``__post_init__`` for objects built in Python.
Amount = Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT)]
#: A custom dimension's name, as ``[limits]`` declares it.
# \Z, not $: msgspec searches with Python's re, where $ also matches before a
# final newline.
DimensionName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}\Z")]
#: Custom dimensions per usage: more than any policy declares.
MAX_EXTRA = 64


_AMOUNTS = ("tokens", "input_tokens", "output_tokens", "wall_ms")


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What an operation used, or is expected to use.

    ``tokens`` is the total; hosts that know the split give ``input_tokens`` and
    ``output_tokens`` too (prices apply per side). ``extra`` holds custom named
    dimensions (integers) declared in ``[limits]``.

    Every integer is in ``[0, MAX_AMOUNT]`` (10^15) and ``cost`` at most
    ``MAX_MONEY`` ($10^9): beyond that a ValueError (a 422 over HTTP), never a
    counter that wraps (see ``guardpool.policy.bounds``).
    """

    tokens: Amount | None = None
    input_tokens: Amount | None = None
    output_tokens: Amount | None = None
    cost: Decimal | None = None
    wall_ms: Amount | None = None
    extra: Annotated[dict[DimensionName, Amount], msgspec.Meta(max_length=MAX_EXTRA)] = (
        msgspec.field(default_factory=dict)
    )

    def __post_init__(self) -> None:
        if self.cost is not None:
            try:
                self.cost = parse_money(self.cost)
            except ValueError as exc:
                raise ValueError(f"Usage.cost: {exc}") from None
        for name in _AMOUNTS:
            v = getattr(self, name)
            # An int in bounds passes in one test; anything else gets the message.
            if v is not None and not (type(v) is int and 0 <= v <= MAX_AMOUNT):
                check_amount(v, f"Usage.{name}")
        if self.tokens is None and self.input_tokens is not None and self.output_tokens is not None:
            self.tokens = check_amount(
                self.input_tokens + self.output_tokens, "Usage.input_tokens + output_tokens"
            )
        if not isinstance(self.extra, dict):
            raise ValueError(f"Usage.extra must be a dict, not {type(self.extra).__name__}")
        if self.extra:
            if len(self.extra) > MAX_EXTRA:
                raise ValueError(f"Usage.extra has more than {MAX_EXTRA} dimensions")
            for k, v in self.extra.items():
                check_amount(v, f"Usage.extra[{k!r}]")


class Operation(msgspec.Struct, kw_only=True):
    """One operation the host is about to perform.

    ``labels`` are colon-segmented (``exe:llm:gpt-4o``, ``op:cmd:git:push``);
    ``input`` is what the guards inspect (text, bytes or JSON-like data).
    """

    labels: tuple[str, ...]
    input: Any = ""
    estimate: Usage | None = None

    def __post_init__(self) -> None:
        # Every door (API, HTTP, CLI, hook) builds an Operation: the label
        # grammar is enforced here once, with full-string matching.
        try:
            self.labels = validate_labels(self.labels)
        except ValueError as exc:
            raise ValueError(f"Operation.{exc}") from None


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
