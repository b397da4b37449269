"""Counters in this process's memory: exact under threads (one lock), gone at exit.

For tests, single-process hosts, and as the reference the other backends are
checked against. Time comes from the clock it is given (default: the wall
clock in ms), read once per step.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence

from guardpool.store import engine
from guardpool.store.base import (
    Clock,
    CounterState,
    Expired,
    ReserveItem,
    StoreAnswer,
    wall_clock_ms,
)

# Finished reservations are kept for idempotent retries, up to this many.
_FINISHED_KEPT = 100_000


class MemoryStore:
    def __init__(self, *, clock: Clock = wall_clock_ms) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._used: dict[tuple[str, str], int] = {}
        self._reserved: dict[tuple[str, str], int] = {}
        self._charges: dict[tuple[str, str], deque[tuple[int, int]]] = {}
        self._reservations: OrderedDict[str, engine.Reservation] = OrderedDict()
        self._deadlines: list[tuple[int, str]] = []
        self.now_ms = 0

    # -- engine.Transaction (called with the lock held)

    def used(self, item: ReserveItem) -> int:
        k = (item.key, item.dimension)
        if not item.window_ms:
            return self._used.get(k, 0)
        charges = self._charges.get(k)
        if not charges:
            return 0
        horizon = self.now_ms - item.window_ms
        while charges and charges[0][0] <= horizon:
            charges.popleft()
        return sum(amount for _, amount in charges)

    def counters(self, items: Sequence[ReserveItem]) -> list[tuple[int, int]]:
        used, reserved = self._used, self._reserved
        shape = engine.shape(items)
        if not shape.windowed:
            return [(used.get(k, 0), reserved.get(k, 0)) for k in shape.counters]
        return [
            (self.used(item) if item.window_ms else used.get(k, 0), reserved.get(k, 0))
            for item, k in zip(items, shape.counters, strict=True)
        ]

    def add_reserved(self, deltas: Sequence[tuple[ReserveItem, int]]) -> None:
        reserved = self._reserved
        for item, delta in deltas:
            k = (item.key, item.dimension)
            reserved[k] = reserved.get(k, 0) + delta

    def charge(self, charges: Sequence[tuple[ReserveItem, int]]) -> None:
        used, reserved = self._used, self._reserved
        for item, amount in charges:
            k = (item.key, item.dimension)
            reserved[k] = reserved.get(k, 0) - item.amount
            if item.window_ms:
                self._charges.setdefault(k, deque()).append((self.now_ms, amount))
            else:
                used[k] = used.get(k, 0) + amount

    def get(self, reservation_id: str) -> engine.Reservation | None:
        return self._reservations.get(reservation_id)

    def put(self, reservation: engine.Reservation) -> None:
        self._reservations[reservation.id] = reservation
        self._reservations.move_to_end(reservation.id)
        if reservation.state == "live":
            heapq.heappush(self._deadlines, (reservation.deadline_ms, reservation.id))
        while len(self._reservations) > _FINISHED_KEPT:
            oldest = next(iter(self._reservations.values()))
            if oldest.state == "live":
                break
            self._reservations.popitem(last=False)

    def overdue(self) -> list[engine.Reservation]:
        due = []
        while self._deadlines and self._deadlines[0][0] < self.now_ms:
            _, rid = heapq.heappop(self._deadlines)
            r = self._reservations.get(rid)
            if r is not None and r.state == "live":
                due.append(r)
        return due

    # -- BudgetStore

    def _begin(self) -> None:
        self.now_ms = self._clock()

    def reserve(
        self, reservation_id: str, items: Sequence[ReserveItem], ttl_ms: int
    ) -> StoreAnswer:
        with self._lock:
            self._begin()
            return engine.reserve(self, reservation_id, items, ttl_ms)

    def settle(self, reservation_id: str, actual: Mapping[str, int]) -> StoreAnswer:
        with self._lock:
            self._begin()
            return engine.settle(self, reservation_id, actual)

    def release(self, reservation_id: str) -> bool:
        with self._lock:
            self._begin()
            return engine.release(self, reservation_id)

    def states(self, items: Sequence[ReserveItem]) -> tuple[CounterState, ...]:
        with self._lock:
            self._begin()
            return engine.states_of(self, items)

    def expire(self) -> tuple[Expired, ...]:
        with self._lock:
            self._begin()
            return engine.expire(self)

    def close(self) -> None:
        pass
