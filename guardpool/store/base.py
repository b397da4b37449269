"""The budget store protocol: atomic arithmetic on named counters.

The enforcer decides *what* to count (which limits match an operation, their
counter keys, the amounts); a store only keeps the counters, and performs a
whole multi-counter reservation as one atomic step. Every backend implements
this one protocol and passes one conformance suite
(``tests/test_store_conformance.py``).

    reserve(id, items, ttl) ──► StoreAnswer(ok=granted, states, refused, expired)
    settle(id, actual)      ──► StoreAnswer(ok=applied, states, expired)
    release(id)             ──► bool

Time: a store reads "now" from a ``Clock`` it is given (milliseconds), so tests
move time forward instead of sleeping. The default is the wall clock, which
processes sharing a file agree on; Redis without a clock uses the server's.

Numbers (``guardpool.policy.bounds``): every store refuses, with a
``ValueError`` and before touching anything, an amount, headroom or limit
outside ``[0, MAX_AMOUNT]`` (10^15). A counter never passes ``COUNTER_CAP``
(2^52): a reservation that would take ``used + reserved`` past it is refused
(whatever ``check`` says), and a charge that would take ``used`` past it is
clamped to it (``capped_charge``), which only ever happens to a counter far
over any limit. So SQLite never overflows its 64-bit integers (the settle used
to raise ``OverflowError`` and be lost) and Redis's Lua doubles never lose
exactness or wrap (``tokens = 2**63`` used to wrap a counter to -2^63 and
make the budget unlimited).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import msgspec

from guardpool.policy.bounds import COUNTER_CAP, MAX_AMOUNT

# Milliseconds since some fixed origin; only differences matter to a store.
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    """The default clock: shared by every process on the machine (SQLite, memory)."""
    return time.time_ns() // 1_000_000


class ReserveItem(msgspec.Struct, frozen=True, kw_only=True):
    """One counter touched by a reservation.

    ``headroom`` is demanded free but not reserved (the no-estimate safety
    margin); ``check=False`` records the item without ever refusing on it
    (post-hoc and warn-only limits); ``window_ms == 0`` counts for the
    counter's lifetime, otherwise over the last ``window_ms``.
    """

    key: str
    dimension: str
    limit: int
    amount: int
    headroom: int = 0
    window_ms: int = 0
    check: bool = True


class CounterState(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    dimension: str
    used: int
    reserved: int
    limit: int


class Expired(msgspec.Struct, frozen=True, kw_only=True):
    """A reservation whose TTL passed; it was charged at its estimate.

    ``charged`` is the largest estimate per dimension (a reservation over two
    limits charges each of them; the figure is what one operation cost).
    """

    reservation_id: str
    charged: dict[str, int]


class StoreAnswer(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The answer of reserve and of settle: one shape for both.

    - ``ok``: reserve — granted; settle — applied (False when the reservation
      is unknown, already settled, released or expired: nothing changed).
    - ``states``: one per item of the reservation, in item order. After the
      step when it changed counters; as found otherwise (a refusal, a settle
      that did not apply).
    - ``refused``: indexes of the items that refused (reserve only).
    - ``expired``: other reservations this step found overdue and charged at
      their estimate; the caller audits them.

    ``gc=False``: a reservation record keeps its reserve's answer (engine.Reservation);
    an answer holds only states, ints and expiries, so no cycle can pass through it.
    """

    ok: bool
    states: tuple[CounterState, ...] = ()
    refused: tuple[int, ...] = ()
    expired: tuple[Expired, ...] = ()


class ServerStoreSettings(Protocol):
    """What a store backed by a server (Redis, PostgreSQL) reads of ``[store]``."""

    @property
    def url(self) -> str | None: ...
    @property
    def key_prefix(self) -> str: ...
    @property
    def connect_timeout_ms(self) -> int: ...
    @property
    def op_timeout_ms(self) -> int: ...


class BudgetStore(Protocol):
    def reserve(
        self, reservation_id: str, items: Sequence[ReserveItem], ttl_ms: int
    ) -> StoreAnswer: ...

    def settle(self, reservation_id: str, actual: Mapping[str, int]) -> StoreAnswer: ...

    def release(self, reservation_id: str) -> bool: ...

    def states(self, items: Sequence[ReserveItem]) -> tuple[CounterState, ...]: ...

    def expire(self) -> tuple[Expired, ...]: ...

    def close(self) -> None: ...


def refuses(item: ReserveItem, used: int, reserved: int) -> bool:
    """The grant rule for one item (``refused_items`` for a whole reservation)."""
    return bool(refused_items((item,), ((used, reserved),)))


def refused_items(
    items: Sequence[ReserveItem], counters: Sequence[tuple[int, int]]
) -> tuple[int, ...]:
    """The grant rule, written once (``lua/common.lua`` has its Lua twin): the indexes
    of the items that refuse, given each counter's ``(used, reserved)``.

    ``used + reserved < limit`` makes a counter that stands at its limit refuse
    the next operation even when that operation carries no estimate. Past
    ``COUNTER_CAP`` every item refuses, checked or not: a counter that cannot
    hold the reservation must not wrap. (One loop for the whole reservation: a
    call per item cost more than the rule.)
    """
    refused = []
    for i, (item, (used, reserved)) in enumerate(zip(items, counters, strict=True)):
        total = used + reserved
        amount = item.amount
        if total + amount > COUNTER_CAP or (
            item.check and (total >= item.limit or total + amount + item.headroom > item.limit)
        ):
            refused.append(i)
    return tuple(refused)


def capped_charge(used: int, amount: int) -> int:
    """What a charge of ``amount`` adds to a counter at ``used``: never past COUNTER_CAP."""
    if 0 <= amount <= COUNTER_CAP - used:  # the usual case, in one comparison
        return amount
    return max(0, min(amount, COUNTER_CAP - used))


def _amount(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT:
        shown = value if isinstance(value, int) and value.bit_length() < 200 else type(value)
        raise ValueError(f"{what} must be an integer in [0, {MAX_AMOUNT}], not {shown}")


# The last tuple of items found in bounds: the enforcer hands a store the same
# tuple (its cached plan) check after check, and a tuple of frozen items cannot change.
_checked: tuple[ReserveItem, ...] = ()


def check_items(items: Sequence[ReserveItem]) -> None:
    """ValueError unless every number of every item is in bounds (before any store step)."""
    global _checked
    if items is _checked:
        return
    for it in items:
        # The common case in one expression (this runs on every reserve); anything
        # else, including int subclasses, takes the path below that names the field.
        if (
            type(it.amount) is int
            and type(it.headroom) is int
            and type(it.limit) is int
            and type(it.window_ms) is int
            and 0 <= it.amount <= MAX_AMOUNT
            and 0 <= it.headroom <= MAX_AMOUNT
            and 0 <= it.limit <= MAX_AMOUNT
            and 0 <= it.window_ms <= MAX_AMOUNT
        ):
            continue
        where = f"reservation item {it.key!r} {it.dimension!r}"
        _amount(it.amount, f"{where} amount")
        _amount(it.headroom, f"{where} headroom")
        _amount(it.limit, f"{where} limit")
        _amount(it.window_ms, f"{where} window_ms")
    if type(items) is tuple:
        _checked = items


def check_actual(actual: Mapping[str, int]) -> None:
    """ValueError unless every settled amount is in bounds (nothing is charged otherwise)."""
    for dimension, value in actual.items():
        if type(value) is not int or not 0 <= value <= MAX_AMOUNT:
            _amount(value, f"settled {dimension!r}")
