"""One conformance suite, every backend: memory, sqlite, a real redis-server and a real
PostgreSQL server.

Every store runs on a ManualClock: tests move time forward instead of sleeping.
A new backend joins by adding its name to BACKENDS and a branch to
``store_config`` (a fixture it needs, such as a server URL, is requested there).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardpool.policy.config import StoreConfig
from guardpool.store import open_store
from guardpool.store.base import (
    BudgetStore,
    CounterState,
    Expired,
    ReserveItem,
    StoreAnswer,
    refuses,
)
from guardpool.store.engine import Reservation

from .conftest import ManualClock

BACKENDS = ["memory", "sqlite", "redis", "postgres"]


def store_config(backend: str, request: pytest.FixtureRequest, sqlite_path: Path) -> StoreConfig:
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        return StoreConfig(backend="redis", url=url, key_prefix="test")
    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")
        schema = request.getfixturevalue("pg_schema")  # a fresh schema per test
        return StoreConfig(backend="postgres", url=url, key_prefix=schema, op_timeout_ms=5000)
    return StoreConfig(backend=backend, path=str(sqlite_path))  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
def store(
    request: pytest.FixtureRequest, sqlite_path: Path, clock: ManualClock
) -> Iterator[BudgetStore]:
    s = open_store(store_config(request.param, request, sqlite_path), clock=clock)
    yield s
    s.close()


def item(
    amount: int = 1,
    limit: int = 10,
    *,
    key: str = "k",
    dimension: str = "calls",
    headroom: int = 0,
    window_ms: int = 0,
    check: bool = True,
) -> ReserveItem:
    return ReserveItem(
        key=key,
        dimension=dimension,
        limit=limit,
        amount=amount,
        headroom=headroom,
        window_ms=window_ms,
        check=check,
    )


def test_grants_until_the_limit_then_refuses(store: BudgetStore) -> None:
    results = [store.reserve(f"r{i}", [item(3)], 60_000) for i in range(4)]
    assert [r.ok for r in results] == [True, True, True, False]
    assert results[2].states[0].reserved == 9
    assert results[3].refused == (0,) and results[3].states[0].reserved == 9


def test_a_counter_at_its_limit_refuses_even_a_zero_estimate(store: BudgetStore) -> None:
    assert store.reserve("a", [item(10)], 60_000).ok
    assert store.settle("a", {"calls": 10}).ok
    assert not store.reserve("b", [item(0)], 60_000).ok


def test_headroom_is_demanded_but_not_reserved(store: BudgetStore) -> None:
    assert store.reserve("a", [item(0, headroom=5)], 60_000).states[0].reserved == 0
    store.settle("a", {"calls": 6})
    assert not store.reserve("b", [item(0, headroom=5)], 60_000).ok  # 6 + 5 > 10
    assert store.reserve("c", [item(0, headroom=4)], 60_000).ok


def test_all_or_nothing_across_items(store: BudgetStore) -> None:
    big = item(8, key="big")
    small = item(5, key="small", limit=4)
    r = store.reserve("a", [big, small], 60_000)
    assert not r.ok and r.refused == (1,)
    assert [s.reserved for s in store.states([big, small])] == [0, 0]


def test_unchecked_items_never_refuse_but_are_charged(store: BudgetStore) -> None:
    post = item(0, check=False, limit=1)
    for i in range(3):
        assert store.reserve(f"r{i}", [post], 60_000).ok
        store.settle(f"r{i}", {"calls": 1})
    assert store.states([post])[0].used == 3


def test_settle_replaces_the_reservation_and_charges_overruns_in_full(store: BudgetStore) -> None:
    tokens = item(100, limit=1000, dimension="tokens")
    calls = item(1, limit=10)
    store.reserve("a", [tokens, calls], 60_000)
    r = store.settle("a", {"tokens": 700})  # calls missing: charged at its reserved amount
    assert r.ok
    assert [(s.used, s.reserved) for s in r.states] == [(700, 0), (1, 0)]


def test_settle_and_reserve_are_idempotent(store: BudgetStore) -> None:
    first = store.reserve("a", [item(2)], 60_000)
    again = store.reserve("a", [item(2)], 60_000)
    assert again == first and store.states([item()])[0].reserved == 2
    assert store.settle("a", {"calls": 2}).ok
    assert not store.settle("a", {"calls": 2}).ok
    assert store.states([item()])[0].used == 2


def test_release_returns_the_reservation_once(store: BudgetStore) -> None:
    store.reserve("a", [item(4)], 60_000)
    assert store.release("a") is True
    assert store.release("a") is False
    assert not store.settle("a", {"calls": 4}).ok
    assert (store.states([item()])[0].used, store.states([item()])[0].reserved) == (0, 0)


def test_overdue_reservations_are_charged_at_their_estimate(
    store: BudgetStore, clock: ManualClock
) -> None:
    store.reserve("a", [item(4)], 50)
    clock.advance(49)
    assert store.expire() == ()  # not yet
    clock.advance(2)
    expired = store.expire()
    assert [(e.reservation_id, e.charged) for e in expired] == [("a", {"calls": 4})]
    assert not store.settle("a", {"calls": 1}).ok  # too late
    s = store.states([item()])[0]
    assert (s.used, s.reserved) == (4, 0)


def test_expiry_also_happens_inside_reserve_and_settle(
    store: BudgetStore, clock: ManualClock
) -> None:
    store.reserve("a", [item(4)], 50)
    clock.advance(51)
    r = store.reserve("b", [item(1)], 60_000)
    assert [e.reservation_id for e in r.expired] == ["a"]
    store.reserve("c", [item(1)], 50)
    clock.advance(51)
    settled = store.settle("b", {"calls": 1})
    assert settled.ok and [e.reservation_id for e in settled.expired] == ["c"]


def test_each_reservation_expires_on_its_own_deadline_whatever_the_order(
    store: BudgetStore, clock: ManualClock
) -> None:
    # Redis keeps the earliest deadline aside to skip the overdue scan: a settled
    # earliest, or a shorter reservation made after a longer one, must not fool it.
    store.reserve("short", [item(1)], 100)
    store.reserve("long", [item(2)], 1_000)
    assert store.settle("short", {}).ok
    clock.advance(500)
    assert store.expire() == ()
    store.reserve("shorter", [item(3)], 100)
    clock.advance(101)
    assert [e.reservation_id for e in store.expire()] == ["shorter"]
    clock.advance(400)
    assert [e.reservation_id for e in store.expire()] == ["long"]
    assert store.expire() == ()
    s = store.states([item()])[0]
    assert (s.used, s.reserved) == (6, 0)


# Windows here are a minute long so that Redis's own key expiry (real time) never
# fires during a test; the manual clock moves past them in one step.


def test_rolling_windows_forget_old_charges(store: BudgetStore, clock: ManualClock) -> None:
    w = item(1, limit=2, window_ms=60_000)
    for rid in ("a", "b"):
        assert store.reserve(rid, [w], 60_000).ok
        store.settle(rid, {"calls": 1})
    assert not store.reserve("c", [w], 60_000).ok
    clock.advance(59_999)
    assert store.states([w])[0].used == 2  # the window is (now - 60 s, now]
    clock.advance(1)
    assert store.states([w])[0].used == 0
    assert store.reserve("d", [w], 60_000).ok


def test_a_window_drops_each_charge_on_its_own_time(store: BudgetStore, clock: ManualClock) -> None:
    w = item(1, limit=100, window_ms=60_000, dimension="tokens")
    store.reserve("old", [w], 120_000)
    store.settle("old", {"tokens": 5})
    clock.advance(30_000)
    store.reserve("new", [w], 120_000)
    store.settle("new", {"tokens": 7})
    assert store.states([w])[0].used == 12
    clock.advance(45_000)  # "old" is 75 s old, "new" 45 s: only "new" still counts
    assert store.states([w])[0].used == 7


def test_an_expired_reservation_is_charged_inside_its_window(
    store: BudgetStore, clock: ManualClock
) -> None:
    w = item(3, limit=100, window_ms=60_000, dimension="tokens")
    store.reserve("a", [w], 50)
    clock.advance(51)
    assert [e.charged for e in store.expire()] == [{"tokens": 3}]
    s = store.states([w])[0]
    assert (s.used, s.reserved) == (3, 0)


def test_a_refused_reservation_stays_refused_when_retried(store: BudgetStore) -> None:
    assert store.reserve("a", [item(8)], 60_000).ok
    assert not store.reserve("b", [item(5)], 60_000).ok
    store.release("a")
    assert not store.reserve("b", [item(5)], 60_000).ok  # the stored answer
    assert store.reserve("c", [item(5)], 60_000).ok


def test_a_counter_never_touched_reads_zero(store: BudgetStore) -> None:
    s = store.states([item(key="nobody", window_ms=1000), item(key="nobody")])
    assert [(c.used, c.reserved, c.limit) for c in s] == [(0, 0, 10), (0, 0, 10)]


def test_sixteen_threads_racing_get_exactly_the_limit(store: BudgetStore) -> None:
    granted: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(10):
            rid = f"t{n}-{i}"
            if store.reserve(rid, [item(1, limit=40)], 60_000).ok:
                with lock:
                    granted.append(rid)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 40
    assert store.states([item(limit=40)])[0].reserved == 40


def test_sqlite_forgets_finished_reservations_after_the_idempotency_window(
    tmp_path: Path,
) -> None:
    from guardpool.store import sqlite, sqlite_tx

    s = sqlite.SqliteStore(tmp_path / "prune.db")
    try:
        s.reserve("old", [item(1)], -sqlite_tx.KEEP_FINISHED_MS - 1000)  # long past its deadline
        first = s.reserve("live", [item(1)], 60_000)  # also expires and charges "old"
        s.reserve("done", [item(1)], 60_000)
        s.settle("done", {"calls": 1})
        assert s.prune() == 1  # only "old": "done" is still inside the window
        again = s.reserve("live", [item(1)], 60_000)  # a retry still gets its first answer
        assert again == first
    finally:
        s.close()


def test_sqlite_prunes_on_the_joint_path_too(tmp_path: Path) -> None:
    # Store and ledger in one file (the default) reserve through SqliteStore.joint,
    # which never pruned: one row per check, kept forever.
    from guardpool.store import sqlite, sqlite_tx

    now = [10**12]
    s = sqlite.SqliteStore(tmp_path / "joint.db", clock=lambda: now[0])
    try:
        for i in range(10):
            s.joint(lambda j, i=i: j.reserve(f"old{i}", [item(1)], 1000, fresh=True))
            s.joint(lambda j, i=i: j.settle(f"old{i}", {"calls": 1}))
        now[0] += sqlite_tx.KEEP_FINISHED_MS + 10_000  # a day later: all ten are forgettable
        for i in range(sqlite._PRUNE_EVERY):
            s.joint(lambda j, i=i: j.reserve(f"new{i}", [item(1)], 60_000, fresh=True))
        rows = s._conn().execute("SELECT id FROM budget_reservations").fetchall()
        assert not [r for (r,) in rows if r.startswith("old")]
        assert len(rows) == sqlite._PRUNE_EVERY  # the new ones stay (live)
    finally:
        s.close()


def test_every_backend_grants_exactly_by_the_rule_in_base(store: BudgetStore) -> None:
    """The Lua twin and the Python rule agree, case by case, at the edges."""
    limit = 4
    for n, (used, reserved, amount, headroom) in enumerate(
        (u, r, a, h) for u in (0, 2, 4) for r in (0, 1, 3) for a in (0, 1, 2) for h in (0, 1)
    ):
        key = f"rule{n}"
        if used:
            store.reserve(f"u{n}", [item(0, limit, key=key, check=False)], 60_000)
            store.settle(f"u{n}", {"calls": used})
        if reserved:
            store.reserve(f"r{n}", [item(reserved, limit, key=key, check=False)], 60_000)
        probe = item(amount, limit, key=key, headroom=headroom)
        expected = not refuses(probe, used, reserved)
        assert store.reserve(f"p{n}", [probe], 60_000).ok is expected, (used, reserved, probe)


def test_a_settle_reports_the_counters_a_fresh_read_finds(
    store: BudgetStore, clock: ManualClock
) -> None:
    """The states a settle answers are computed, not read again: they must match a read,
    for lifetime and windowed counters, over- and under-runs, and a charge clamped at
    the cap."""
    lifetime = item(5, 10**15, key="life", dimension="tokens", check=False)
    windowed = item(4, 10**15, key="win", dimension="tokens", window_ms=60_000, check=False)
    calls = item(1, 10**15, key="life")
    # The eighth settle takes the token counters past COUNTER_CAP: clamped.
    for n, tokens in enumerate((2, 9, 0, *[10**15] * 5)):
        items = [lifetime, windowed, calls]
        assert store.reserve(f"s{n}", items, 60_000).ok
        clock.advance(1_000)
        answer = store.settle(f"s{n}", {"tokens": tokens})
        assert answer.ok
        assert answer.states == store.states(items), n


def test_a_settle_of_a_counter_listed_twice_reports_it_as_a_read_does(
    store: BudgetStore,
) -> None:
    twice = [item(3, 100, key="dup"), item(2, 100, key="dup"), item(1, 100, key="other")]
    assert store.reserve("d", twice, 60_000).ok
    answer = store.settle("d", {"calls": 4})
    assert answer.ok and answer.states == store.states(twice)


def test_the_same_tuple_of_items_reserved_again_counts_again(store: BudgetStore) -> None:
    # The enforcer hands a store the same tuple (its cached plan) every check; stores
    # remember, by identity, that a tuple was checked and names each counter once.
    twice = (item(3, 100, key="dup"), item(2, 100, key="dup"), item(1, 100, key="other"))
    once = (item(3, 100, key="solo"), item(1, 100, key="other2"))
    for n in range(3):
        for name, items in (("t", twice), ("o", once)):
            answer = store.reserve(f"{name}{n}", items, 60_000)
            assert answer.ok and answer.states == store.states(items), (name, n)
    assert [s.reserved for s in store.states(twice)] == [15, 15, 3]
    assert [s.reserved for s in store.states(once)] == [9, 3]
    for n in range(3):
        answer = store.settle(f"t{n}", {"calls": 4})
        assert answer.ok and answer.states == store.states(twice), n
    assert [(s.used, s.reserved) for s in store.states(twice)] == [(24, 0), (24, 0), (12, 0)]


def test_a_tuple_out_of_bounds_is_refused_after_one_in_bounds(store: BudgetStore) -> None:
    good = (item(1, 100, key="k"),)
    assert store.reserve("g", good, 60_000).ok
    bad = (item(1, 100, key="k"), ReserveItem(key="k2", dimension="calls", limit=100, amount=-1))
    with pytest.raises(ValueError, match="amount"):
        store.reserve("b", bad, 60_000)
    assert store.reserve("g2", good, 60_000).ok
    assert store.states(good)[0].reserved == 2


@pytest.mark.parametrize("keys", [1, 3, 70])
def test_counters_of_many_keys_are_each_found(store: BudgetStore, keys: int) -> None:
    # SQLite reads a few keys as one search per key and many (past 64) as an IN list.
    items = [item(1 + n % 3, 100, key=f"k{n}", dimension=d) for n in range(keys) for d in "ab"]
    for rid in ("r1", "r2"):
        answer = store.reserve(rid, items, 60_000)
        assert answer.ok and answer.states == store.states(items)
    assert [s.reserved for s in store.states(items)] == [2 * it.amount for it in items]
    assert store.settle("r1", {"a": 5}).ok
    states = store.states(items)
    assert [s.used for s in states] == [5 if it.dimension == "a" else it.amount for it in items]


def test_each_tuple_of_items_reads_its_own_counters(store: BudgetStore) -> None:
    """A store may remember per-tuple facts (the memory store: each item's key, the
    engine: whether keys repeat) by identity; another tuple, even of the same shape,
    or a list, must read its own counters, and a windowed item its window."""
    a = (item(3, key="a"), item(1, dimension="tokens", key="a"))
    b = (item(5, key="b"), item(2, dimension="tokens", key="b"))
    assert store.reserve("ra", a, 60_000).ok
    assert store.settle("ra", {"calls": 3, "tokens": 1}).ok
    got = store.reserve("rb", b, 60_000)
    assert [(s.key, s.used, s.reserved) for s in got.states] == [("b", 0, 5), ("b", 0, 2)]
    twice = (item(1, key="a"), item(1, key="a"))  # one counter named twice
    assert [(s.used, s.reserved) for s in store.reserve("rt", twice, 60_000).states] == [
        (3, 2),
        (3, 2),
    ]
    # A windowed item counts the charges in its window: none (3 were lifetime charges).
    windowed = [item(1, key="a", window_ms=1000), item(1, key="b")]
    assert [(s.used, s.reserved) for s in store.reserve("rw", windowed, 60_000).states] == [
        (0, 3),
        (0, 6),
    ]
    assert [(s.used, s.reserved) for s in store.states(list(a))] == [(3, 3), (1, 0)]


def test_reservation_records_are_not_tracked_by_the_cyclic_gc() -> None:
    """The memory store keeps up to 100,000 finished reservations: tracked, each full
    collection walked them all (a reservation and its answer hold only strings, ints,
    frozen items and states: no cycle can pass through them)."""
    state = CounterState(key="k", dimension="calls", used=1, reserved=2, limit=3)
    expired = (Expired(reservation_id="x", charged={"calls": 1}),)
    answer = StoreAnswer(ok=True, states=(state,), expired=expired)
    r = Reservation(id="a", state="live", deadline_ms=1, items=(item(),), result=answer)
    assert not gc.is_tracked(answer)
    assert not gc.is_tracked(r)
