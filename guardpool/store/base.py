"""The budget store protocol: atomic arithmetic on named counters.

The enforcer decides *what* to count (which limits match an operation, their
counter keys, the amounts); a store only keeps the counters, and performs a
whole multi-counter reservation as one atomic step. Memory, SQLite and Redis
implement this one protocol and pass one conformance suite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec


class ReserveItem(msgspec.Struct, frozen=True, kw_only=True):
    """One counter touched by a reservation."""

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
    """A reservation whose TTL passed; it was charged at its estimate."""

    reservation_id: str
    charged: dict[str, int]


class ReserveResult(msgspec.Struct, frozen=True, kw_only=True):
    """States are after the reservation when granted, as found when refused."""

    granted: bool
    states: tuple[CounterState, ...]
    refused: tuple[int, ...] = ()
    expired: tuple[Expired, ...] = ()


class SettleResult(msgspec.Struct, frozen=True, kw_only=True):
    applied: bool
    states: tuple[CounterState, ...] = ()


class BudgetStore(Protocol):
    def reserve(
        self, reservation_id: str, items: Sequence[ReserveItem], ttl_ms: int
    ) -> ReserveResult: ...

    def settle(self, reservation_id: str, actual: Mapping[str, int]) -> SettleResult: ...

    def release(self, reservation_id: str) -> bool: ...

    def states(self, items: Sequence[ReserveItem]) -> tuple[CounterState, ...]: ...

    def expire(self) -> tuple[Expired, ...]: ...

    def close(self) -> None: ...


def refuses(item: ReserveItem, used: int, reserved: int) -> bool:
    """The grant rule for one checked item.

    ``used + reserved < limit`` makes a counter that stands at its limit refuse
    the next operation even when that operation carries no estimate.
    """
    total = used + reserved
    return item.check and (total >= item.limit or total + item.amount + item.headroom > item.limit)
