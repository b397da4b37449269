"""One conformance suite, every backend: memory, sqlite and a real redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardpool.policy.config import StoreConfig
from guardpool.store import open_store
from guardpool.store.base import BudgetStore, ReserveItem


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, sqlite_path: Path) -> Iterator[BudgetStore]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    s = open_store(
        StoreConfig(backend=request.param, path=str(sqlite_path), url=url, key_prefix="test")
    )
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
    assert [r.granted for r in results] == [True, True, True, False]
    assert results[2].states[0].reserved == 9
    assert results[3].refused == (0,) and results[3].states[0].reserved == 9


def test_a_counter_at_its_limit_refuses_even_a_zero_estimate(store: BudgetStore) -> None:
    assert store.reserve("a", [item(10)], 60_000).granted
    assert store.settle("a", {"calls": 10}).applied
    assert not store.reserve("b", [item(0)], 60_000).granted


def test_headroom_is_demanded_but_not_reserved(store: BudgetStore) -> None:
    assert store.reserve("a", [item(0, headroom=5)], 60_000).states[0].reserved == 0
    store.settle("a", {"calls": 6})
    assert not store.reserve("b", [item(0, headroom=5)], 60_000).granted  # 6 + 5 > 10
    assert store.reserve("c", [item(0, headroom=4)], 60_000).granted


def test_all_or_nothing_across_items(store: BudgetStore) -> None:
    big = item(8, key="big")
    small = item(5, key="small", limit=4)
    r = store.reserve("a", [big, small], 60_000)
    assert not r.granted and r.refused == (1,)
    assert [s.reserved for s in store.states([big, small])] == [0, 0]


def test_unchecked_items_never_refuse_but_are_charged(store: BudgetStore) -> None:
    post = item(0, check=False, limit=1)
    for i in range(3):
        assert store.reserve(f"r{i}", [post], 60_000).granted
        store.settle(f"r{i}", {"calls": 1})
    assert store.states([post])[0].used == 3


def test_settle_replaces_the_reservation_and_charges_overruns_in_full(store: BudgetStore) -> None:
    tokens = item(100, limit=1000, dimension="tokens")
    calls = item(1, limit=10)
    store.reserve("a", [tokens, calls], 60_000)
    r = store.settle("a", {"tokens": 700})  # calls missing: charged at its reserved amount
    assert r.applied
    assert [(s.used, s.reserved) for s in r.states] == [(700, 0), (1, 0)]


def test_settle_and_reserve_are_idempotent(store: BudgetStore) -> None:
    first = store.reserve("a", [item(2)], 60_000)
    again = store.reserve("a", [item(2)], 60_000)
    assert again == first and store.states([item()])[0].reserved == 2
    assert store.settle("a", {"calls": 2}).applied
    assert not store.settle("a", {"calls": 2}).applied
    assert store.states([item()])[0].used == 2


def test_release_returns_the_reservation_once(store: BudgetStore) -> None:
    store.reserve("a", [item(4)], 60_000)
    assert store.release("a") is True
    assert store.release("a") is False
    assert not store.settle("a", {"calls": 4}).applied
    assert (store.states([item()])[0].used, store.states([item()])[0].reserved) == (0, 0)


def test_overdue_reservations_are_charged_at_their_estimate(store: BudgetStore) -> None:
    store.reserve("a", [item(4)], 50)
    time.sleep(0.2)
    expired = store.expire()
    assert [(e.reservation_id, e.charged) for e in expired] == [("a", {"calls": 4})]
    assert not store.settle("a", {"calls": 1}).applied  # too late
    s = store.states([item()])[0]
    assert (s.used, s.reserved) == (4, 0)


def test_expiry_also_happens_inside_reserve(store: BudgetStore) -> None:
    store.reserve("a", [item(4)], 50)
    time.sleep(0.2)
    r = store.reserve("b", [item(1)], 60_000)
    assert [e.reservation_id for e in r.expired] == ["a"]


def test_rolling_windows_forget_old_charges(store: BudgetStore) -> None:
    w = item(1, limit=2, window_ms=300)
    for rid in ("a", "b"):
        assert store.reserve(rid, [w], 60_000).granted
        store.settle(rid, {"calls": 1})
    assert not store.reserve("c", [w], 60_000).granted
    time.sleep(0.45)
    assert store.states([w])[0].used == 0
    assert store.reserve("d", [w], 60_000).granted


def test_a_window_drops_each_charge_on_its_own_time(store: BudgetStore) -> None:
    w = item(1, limit=100, window_ms=600, dimension="tokens")
    store.reserve("old", [w], 60_000)
    store.settle("old", {"tokens": 5})
    time.sleep(0.3)
    store.reserve("new", [w], 60_000)
    store.settle("new", {"tokens": 7})
    assert store.states([w])[0].used == 12
    time.sleep(0.45)  # "old" is 750 ms old, "new" 450 ms: only "new" still counts
    assert store.states([w])[0].used == 7


def test_an_expired_reservation_is_charged_inside_its_window(store: BudgetStore) -> None:
    w = item(3, limit=100, window_ms=60_000, dimension="tokens")
    store.reserve("a", [w], 50)
    time.sleep(0.2)
    store.expire()
    s = store.states([w])[0]
    assert (s.used, s.reserved) == (3, 0)


def test_a_refused_reservation_stays_refused_when_retried(store: BudgetStore) -> None:
    assert store.reserve("a", [item(8)], 60_000).granted
    assert not store.reserve("b", [item(5)], 60_000).granted
    store.release("a")
    assert not store.reserve("b", [item(5)], 60_000).granted  # the stored answer
    assert store.reserve("c", [item(5)], 60_000).granted


def test_a_counter_never_touched_reads_zero(store: BudgetStore) -> None:
    s = store.states([item(key="nobody", window_ms=1000), item(key="nobody")])
    assert [(c.used, c.reserved, c.limit) for c in s] == [(0, 0, 10), (0, 0, 10)]


def test_sixteen_threads_racing_get_exactly_the_limit(store: BudgetStore) -> None:
    granted: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(10):
            rid = f"t{n}-{i}"
            if store.reserve(rid, [item(1, limit=40)], 60_000).granted:
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
    from guardpool.store import sqlite

    s = sqlite.SqliteStore(tmp_path / "prune.db")
    try:
        s.reserve("old", [item(1)], -sqlite.KEEP_FINISHED_MS - 1000)  # long past its deadline
        first = s.reserve("live", [item(1)], 60_000)  # also expires and charges "old"
        s.reserve("done", [item(1)], 60_000)
        s.settle("done", {"calls": 1})
        assert s.prune() == 1  # only "old": "done" is still inside the window
        again = s.reserve("live", [item(1)], 60_000)  # a retry still gets its first answer
        assert again == first
    finally:
        s.close()
