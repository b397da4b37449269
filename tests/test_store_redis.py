"""Many hosts, one Redis: exact budgets under races, fail closed on outage, recovery."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis
from redis.crc import key_slot

from guardpool import Enforcer, Operation, Usage
from guardpool.store.base import ReserveItem
from guardpool.store.errors import StoreUnavailable
from guardpool.store.redis import RedisStore

from .conftest import ManualClock, RedisServer

ROOT = Path(__file__).resolve().parent.parent

RACER = textwrap.dedent(
    """
    import json, sys
    from types import SimpleNamespace
    from guardpool.store.redis import RedisStore
    from guardpool.store.base import ReserveItem
    url, name, n, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = RedisStore(SimpleNamespace(url=url, key_prefix="race", connect_timeout_ms=2000,
                                       op_timeout_ms=2000))
    if kind == "cost":
        items = [ReserveItem(key="team|global", dimension="cost", limit=10_000_000,
                             amount=250_000)]
    else:
        items = [ReserveItem(key="team|calls", dimension="calls", limit=25, amount=1,
                             window_ms=60_000)]
    granted = 0
    for i in range(n):
        rid = f"{name}-{i}"
        if store.reserve(rid, items, 60_000).ok:
            granted += 1
            store.settle(rid, {})
    print(json.dumps(granted))
    """
)


def settings(url: str, timeout_ms: int = 250) -> Any:
    return SimpleNamespace(
        url=url, key_prefix="t", connect_timeout_ms=timeout_ms, op_timeout_ms=timeout_ms
    )


def race(url: str, kind: str, hosts: int = 4, n: int = 20) -> int:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, f"h{h}", str(n), kind],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for h in range(hosts)
    ]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        total += json.loads(out)
    return total


def test_four_hosts_race_for_ten_dollars_in_quarter_steps(redis_url: str) -> None:
    assert race(redis_url, "cost") == 40


def test_four_hosts_race_for_calls_in_a_rolling_window(redis_url: str) -> None:
    assert race(redis_url, "calls") == 25


def test_an_outage_denies_within_the_timeout_and_recovery_is_automatic(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    cfg = {
        "limits": {"exe:llm:*": {"calls": 100, "scope": "global"}},
        "store": {
            "backend": "redis",
            "url": redis_url,
            "connect_timeout_ms": 250,
            "op_timeout_ms": 250,
        },
        "audit": {"path": str(tmp_path / "audit.db")},
    }
    op = Operation(labels=("exe:llm:x",), input="hi")
    with Enforcer.from_config(cfg) as e:
        run = e.run("outage")
        granted = run.check(op)
        assert granted.allowed
        redis_server.stop()
        try:
            start = time.monotonic()
            down = run.check(op)
            assert time.monotonic() - start < 2.0
            assert not down.allowed
            assert down.reasons[0].startswith("budget store unavailable: redis")
            assert down.reasons[0].count("budget store unavailable") == 1
            # A settle the store cannot take warns, naming the store once.
            settled = run.settle(granted, Usage(tokens=1))
            warned = [r for r in settled.reasons if "budget store unavailable" in r]
            assert len(warned) == 1, settled.reasons
            assert warned[0].startswith("budget store unavailable: redis")
            assert warned[0].endswith("(at settle)")
            assert warned[0].count("budget store unavailable") == 1
        finally:
            redis_server.start()
        assert run.check(op).allowed  # the same enforcer, reconnected by itself


def test_a_crashed_hosts_reservation_expires_and_is_charged(redis_url: str) -> None:
    crasher = textwrap.dedent(
        """
        import os, sys
        from types import SimpleNamespace
        from guardpool.store.redis import RedisStore
        from guardpool.store.base import ReserveItem
        store = RedisStore(SimpleNamespace(url=sys.argv[1], key_prefix="t",
                                           connect_timeout_ms=2000, op_timeout_ms=2000),
                           clock=lambda: 1_000_000)
        item = ReserveItem(key="k", dimension="tokens", limit=1000, amount=400)
        assert store.reserve("crashed", [item], 100).ok
        os._exit(9)
        """
    )
    p = subprocess.run([sys.executable, "-c", crasher, redis_url], cwd=ROOT, check=False)
    assert p.returncode == 9
    clock = ManualClock(1_000_000)
    store = RedisStore(settings(redis_url), clock=clock)
    item = ReserveItem(key="k", dimension="tokens", limit=1000, amount=0)
    assert store.states([item])[0].reserved == 400
    clock.advance(99)
    assert store.expire() == ()
    clock.advance(2)
    assert [e.reservation_id for e in store.expire()] == ["crashed"]
    s = store.states([item])[0]
    assert (s.used, s.reserved) == (400, 0)
    store.close()


def test_an_unreachable_server_is_unavailable_not_an_allow() -> None:
    store = RedisStore(settings("redis://127.0.0.1:1/0", timeout_ms=100))
    with pytest.raises(StoreUnavailable, match="budget store unavailable"):
        store.reserve("x", [ReserveItem(key="k", dimension="calls", limit=1, amount=1)], 1000)


def cost(amount: int = 250_000, **kw: Any) -> ReserveItem:
    return ReserveItem(key="team", dimension="cost", limit=10_000_000, amount=amount, **kw)


def test_a_killed_server_is_unavailable_then_the_same_store_recovers(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(settings(redis_url))
    assert store.reserve("before", [cost()], 60_000).ok
    redis_server.stop()
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="budget store unavailable"):
            store.reserve("during", [cost()], 60_000)
        assert time.monotonic() - start < 2.0
    finally:
        redis_server.start()
    # A fresh server without persistence: the pool reconnects and the scripts load again.
    assert store.reserve("after", [cost()], 60_000).ok
    assert store.states([cost()])[0].reserved == 250_000
    store.close()


def test_a_hung_server_is_unavailable_within_the_timeout(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(settings(redis_url, timeout_ms=250))
    assert store.reserve("before", [cost()], 60_000).ok
    redis_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="budget store unavailable"):
            store.reserve("during", [cost()], 60_000)
        assert time.monotonic() - start < 2.0  # a timeout is not retried with backoff
    finally:
        redis_server.resume()
    assert store.reserve("after", [cost()], 60_000).ok
    store.close()


def test_scripts_flushed_from_the_server_are_loaded_again(redis_url: str) -> None:
    store = RedisStore(settings(redis_url))
    assert store.reserve("a", [cost()], 60_000).ok
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    client.execute_command("FUNCTION", "FLUSH")  # steps run as functions on Redis >= 7
    client.close()
    assert store.settle("a", {"cost": 100_000}).ok
    assert store.states([cost()])[0].used == 100_000
    store.close()


def test_every_key_shares_one_cluster_slot_and_prefixes_are_isolated(redis_url: str) -> None:
    a = RedisStore(SimpleNamespace(**{**vars(settings(redis_url)), "key_prefix": "team-a"}))
    b = RedisStore(SimpleNamespace(**{**vars(settings(redis_url)), "key_prefix": "team-b"}))
    windowed = cost(window_ms=60_000)
    a.reserve("r1", [cost(), windowed], 60_000)
    a.settle("r1", {})
    a.reserve("r2", [cost()], 60_000)
    assert b.states([cost(), windowed])[0].reserved == 0
    client = redis.Redis.from_url(redis_url)
    keys = cast(list[bytes], client.keys("*"))
    client.close()
    assert keys and all(k.startswith(b"{team-a}:") for k in keys)
    assert len({key_slot(k) for k in keys}) == 1
    a.close()
    b.close()


def test_window_entries_are_pruned_once_out_of_the_window(redis_url: str) -> None:
    clock = ManualClock()
    store = RedisStore(settings(redis_url), clock=clock)
    # A minute-long window: Redis's own key expiry (real time) never fires in this test.
    w = ReserveItem(key="k", dimension="calls", limit=10**6, amount=1, window_ms=60_000)
    for i in range(50):
        store.reserve(f"r{i}", [w], 600_000)
        store.settle(f"r{i}", {})
    client = redis.Redis.from_url(redis_url)
    (zset,) = cast(list[bytes], client.keys("*:w:*"))
    assert client.zcard(zset) == 50
    clock.advance(30_000)
    store.reserve("late", [w], 600_000)
    store.settle("late", {})
    assert store.states([w])[0].used == 51
    clock.advance(30_000)  # the first 50 are out of the window, "late" is not
    assert store.states([w])[0].used == 1
    assert client.zcard(zset) == 1  # pruned, not merely skipped
    client.close()
    store.close()


def test_window_keys_expire_a_window_after_the_newest_charge(redis_url: str) -> None:
    """Real time: this is Redis's key expiry, which no store clock moves."""
    store = RedisStore(settings(redis_url))
    w = ReserveItem(key="k", dimension="calls", limit=10**6, amount=1, window_ms=200)
    store.reserve("a", [w], 60_000)
    store.settle("a", {})
    client = redis.Redis.from_url(redis_url)
    assert len(cast(list[bytes], client.keys("*:w*"))) == 2  # the charges and their sum
    deadline = time.monotonic() + 10  # generous: expiry is due 200 ms after the charge
    while client.keys("*:w*") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.keys("*:w*") == []
    assert store.states([w])[0].used == 0
    client.close()
    store.close()


def test_a_settle_by_another_host_names_every_counter_from_the_record(redis_url: str) -> None:
    """The settle answer names its counters from the reserve's stored items (the flat
    array of hash fields, then values): keys with a newline or a '|', non-ASCII
    dimensions, a shared counter and a windowed one all come back as reserved."""
    items = [
        ReserveItem(key="team|a\nb", dimension="tokens", limit=1000, amount=10),
        ReserveItem(key="*|global", dimension="coût", limit=500, amount=7, headroom=3),
        ReserveItem(key="*|global", dimension="coût", limit=900, amount=2, check=False),
        ReserveItem(key="p|calls", dimension="calls", limit=5, amount=1, window_ms=60_000),
    ]
    host_a = RedisStore(settings(redis_url))
    host_b = RedisStore(settings(redis_url))
    try:
        reserved = host_a.reserve("named-1", items, 60_000)
        assert reserved.ok
        assert [(s.key, s.dimension, s.limit, s.reserved) for s in reserved.states] == [
            ("team|a\nb", "tokens", 1000, 10),
            ("*|global", "coût", 500, 9),
            ("*|global", "coût", 900, 9),
            ("p|calls", "calls", 5, 1),
        ]
        settled = host_b.settle("named-1", {"tokens": 4, "coût": 5})
        assert settled.ok
        assert [(s.key, s.dimension, s.limit, s.used, s.reserved) for s in settled.states] == [
            ("team|a\nb", "tokens", 1000, 4, 0),
            ("*|global", "coût", 500, 10, 0),  # both items charge the shared counter
            ("*|global", "coût", 900, 10, 0),
            ("p|calls", "calls", 5, 1, 0),
        ]
        assert host_b.states(items) == settled.states
    finally:
        host_a.close()
        host_b.close()


def test_the_clients_wire_caches_stay_bounded_and_name_each_item_set_apart(
    redis_url: str,
) -> None:
    """pack_items() and the settle's naming are cached by value: 1,500 distinct item sets
    (more than a cache holds) each come back with their own names, limits and counts,
    and no cache grows past its bound."""
    from guardpool.store import redis as store_redis

    store = RedisStore(SimpleNamespace(**{**vars(settings(redis_url)), "key_prefix": "caches"}))
    try:
        for i in range(1_500):
            items = [
                ReserveItem(key=f"k{i}", dimension="tokens", limit=1_000 + i, amount=i % 7),
                ReserveItem(key="*", dimension=f"d{i % 3}", limit=10**12, amount=1),
            ]
            assert store.reserve(f"cache-{i}", items, 60_000).ok
            settled = store.settle(f"cache-{i}", {"tokens": i % 5})
            assert [(s.key, s.dimension, s.limit, s.used) for s in settled.states] == [
                (f"k{i}", "tokens", 1_000 + i, i % 5),
                ("*", f"d{i % 3}", 10**12, i // 3 + 1),
            ]
        caches = (store_redis._fields_cache, store_redis._names_cache, store_redis._packed_cache)
        assert all(0 < len(c) <= store_redis._CACHE_SIZE for c in caches)
    finally:
        store.close()
