"""The reservation algorithm, written once for every backend that can offer a transaction.

A backend provides a ``Transaction`` (read and write counters, charges and
reservation records, all inside one atomic step: a lock for memory, a
``BEGIN IMMEDIATE`` for SQLite). Counters are read and written a whole
reservation at a time, so SQLite answers a step in a handful of statements
whatever the number of limits and dimensions. The functions here implement reserve, settle,
release and expiry on top of it, so memory and SQLite cannot drift apart.
Redis runs the same algorithm as Lua scripts (``redis.py``), because there the
atomic step has to happen on the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import msgspec

from guardpool.store.base import (
    CounterState,
    Expired,
    ReserveItem,
    StoreAnswer,
    capped_charge,
    check_actual,
    check_items,
    refused_items,
)

State = Literal["live", "settled", "released", "expired", "refused"]


class Reservation(msgspec.Struct, kw_only=True, gc=False):
    # gc=False: the memory store keeps up to 100,000 of these (finished ones answer
    # retries), which every full collection of the cyclic GC walked; they hold only
    # strings, ints, frozen items and an answer, so no cycle can pass through one.
    id: str
    state: State
    deadline_ms: int
    items: tuple[ReserveItem, ...]
    # The reserve's answer, repeated to a retry; for a fresh id (no retry can come)
    # only its grant and refused items.
    result: StoreAnswer


class Transaction(Protocol):
    now_ms: int  # the store's clock, read once when the transaction began

    def counters(self, items: Sequence[ReserveItem]) -> list[tuple[int, int]]:
        """(used, reserved) of every item's counter, in item order."""
        ...

    def add_reserved(self, deltas: Sequence[tuple[ReserveItem, int]]) -> None: ...

    def charge(self, charges: Sequence[tuple[ReserveItem, int]]) -> None:
        """Drop each item's reservation and charge the amount instead."""
        ...

    def get(self, reservation_id: str) -> Reservation | None: ...

    def put(self, reservation: Reservation) -> None: ...

    def overdue(self) -> list[Reservation]:
        """Live reservations past their deadline (may skip the look when none can be)."""
        ...


def states_of(tx: Transaction, items: Sequence[ReserveItem]) -> tuple[CounterState, ...]:
    return _states(items, tx.counters(items))


def _states(
    items: Sequence[ReserveItem], counters: Sequence[tuple[int, int]]
) -> tuple[CounterState, ...]:
    return tuple(
        CounterState(
            key=item.key, dimension=item.dimension, used=used, reserved=reserved, limit=item.limit
        )
        for item, (used, reserved) in zip(items, counters, strict=True)
    )


def capped(
    tx: Transaction, items: Sequence[ReserveItem], amounts: Sequence[int]
) -> tuple[list[tuple[ReserveItem, int]], tuple[CounterState, ...]]:
    """Each charge (``amounts[i]`` to ``items[i]``) clamped so that a counter's ``used``
    never passes COUNTER_CAP (base.py), and the counters' states once the clamped charges
    are made.

    Nothing else runs inside the transaction, so the states after are arithmetic
    on the states before: one read of the counters, not two.
    """
    before = tx.counters(items)
    if shape(items).distinct:
        # The usual case, each counter once: its own charge moves it (one pass).
        clamped = []
        after = []
        for item, amount, (used, reserved) in zip(items, amounts, before, strict=True):
            amount = capped_charge(used, amount)
            clamped.append((item, amount))
            after.append(
                CounterState(
                    key=item.key,
                    dimension=item.dimension,
                    used=used + amount,
                    reserved=reserved - item.amount,
                    limit=item.limit,
                )
            )
        return clamped, tuple(after)
    clamped = [
        (item, capped_charge(used, amount))
        for item, amount, (used, _) in zip(items, amounts, before, strict=True)
    ]
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    for item, amount in clamped:
        k = (item.key, item.dimension)
        used_by, reserved_by = totals.get(k, (0, 0))
        totals[k] = (used_by + amount, reserved_by + item.amount)
    moves = [totals[(item.key, item.dimension)] for item in items]
    states = tuple(
        CounterState(
            key=item.key,
            dimension=item.dimension,
            used=used + used_by,
            reserved=reserved - reserved_by,
            limit=item.limit,
        )
        for item, (used, reserved), (used_by, reserved_by) in zip(items, before, moves, strict=True)
    )
    return clamped, states


class Shape(msgspec.Struct, frozen=True):
    """What a tuple of items is, apart from the amounts: computed once per tuple."""

    counters: tuple[tuple[str, str], ...]  # each item's counter (key, dimension)
    keys: tuple[str, ...]  # the distinct keys, in first-seen order
    distinct: bool  # no two items share a counter
    windowed: bool  # some item counts over a window


# Shapes of item tuples, by identity: a store sees the same few tuples (the enforcer's
# cached plans, the reservations made from them) again and again.
_SHAPES: dict[int, tuple[tuple[ReserveItem, ...], Shape]] = {}
_SHAPES_KEPT = 256


def shape(items: Sequence[ReserveItem]) -> Shape:
    """``items``' Shape; remembered for a tuple (a tuple of frozen items cannot change)."""
    found = _SHAPES.get(id(items))
    if found is not None and found[0] is items:
        return found[1]
    counters = tuple((item.key, item.dimension) for item in items)
    made = Shape(
        counters=counters,
        keys=tuple(dict.fromkeys(item.key for item in items)),
        distinct=len(set(counters)) == len(counters),
        windowed=any(item.window_ms for item in items),
    )
    if type(items) is tuple:
        if len(_SHAPES) >= _SHAPES_KEPT:
            _SHAPES.clear()
        # The tuple is kept with its shape, so its id cannot be reused meanwhile.
        _SHAPES[id(items)] = (items, made)
    return made


def expire(tx: Transaction) -> tuple[Expired, ...]:
    """Charge every overdue live reservation at its estimate."""
    expired = []
    for r in tx.overdue():
        charged: dict[str, int] = {}
        for item in r.items:
            charged[item.dimension] = max(charged.get(item.dimension, 0), item.amount)
        tx.charge(capped(tx, r.items, [item.amount for item in r.items])[0])
        r.state = "expired"
        tx.put(r)
        expired.append(Expired(reservation_id=r.id, charged=charged))
    return tuple(expired)


def reserve(
    tx: Transaction,
    reservation_id: str,
    items: Sequence[ReserveItem],
    ttl_ms: int,
    *,
    fresh: bool = False,
) -> StoreAnswer:
    """``fresh``: the caller minted ``reservation_id`` just now (a check's random
    decision id), so no earlier request can have used it and the idempotency
    read is skipped. Were a row there all the same, the backend's insert of the
    reservation fails on its primary key and the step rolls back (fail closed).
    """
    check_items(items)
    previous = None if fresh else tx.get(reservation_id)
    if previous is not None:  # a retried request: same answer, no second reservation
        return previous.result
    expired = expire(tx)
    counters = tx.counters(items)
    refused = refused_items(items, counters)
    if refused:
        before = _states(items, counters)
        result = StoreAnswer(ok=False, states=before, refused=refused, expired=expired)
        state: State = "refused"
    else:
        tx.add_reserved([(item, item.amount) for item in items])
        # Nothing else can run inside the transaction: the states after are arithmetic.
        if shape(items).distinct:  # the usual case, each counter once: its own amount moves it
            after = tuple(
                CounterState(
                    key=item.key,
                    dimension=item.dimension,
                    used=used,
                    reserved=reserved + item.amount,
                    limit=item.limit,
                )
                for item, (used, reserved) in zip(items, counters, strict=True)
            )
        else:
            added: dict[tuple[str, str], int] = {}
            for item in items:
                k = (item.key, item.dimension)
                added[k] = added.get(k, 0) + item.amount
            moved = [
                (used, reserved + added[(item.key, item.dimension)])
                for item, (used, reserved) in zip(items, counters, strict=True)
            ]
            after = _states(items, moved)
        result = StoreAnswer(ok=True, states=after, expired=expired)
        state = "live"
    tx.put(
        Reservation(
            id=reservation_id,
            state=state,
            deadline_ms=tx.now_ms + ttl_ms,
            items=tuple(items),
            # A fresh id can have no retry: the record keeps the grant and the refused
            # items but not the states (half the record's bytes, written on every check).
            result=StoreAnswer(ok=result.ok, refused=result.refused) if fresh else result,
        )
    )
    return result


def settle(tx: Transaction, reservation_id: str, actual: Mapping[str, int]) -> StoreAnswer:
    check_actual(actual)
    expired = expire(tx)
    r = tx.get(reservation_id)
    if r is None or r.state != "live":
        current = states_of(tx, r.items) if r is not None else ()
        return StoreAnswer(ok=False, states=current, expired=expired)
    amounts = [actual.get(item.dimension, item.amount) for item in r.items]
    charges, after = capped(tx, r.items, amounts)
    tx.charge(charges)
    r.state = "settled"
    tx.put(r)
    return StoreAnswer(ok=True, states=after, expired=expired)


def release(tx: Transaction, reservation_id: str) -> bool:
    r = tx.get(reservation_id)
    if r is None or r.state != "live":
        return False
    tx.add_reserved([(item, -item.amount) for item in r.items])
    r.state = "released"
    tx.put(r)
    return True
