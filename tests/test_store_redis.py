"""Many hosts, one Redis: exact budgets under races, fail closed on outage, recovery."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from guardpool import Enforcer, Operation
from guardpool.store.base import ReserveItem
from guardpool.store.errors import StoreUnavailable
from guardpool.store.redis import RedisStore

from .conftest import RedisServer

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
        if store.reserve(rid, items, 60_000).granted:
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
        assert run.check(op).allowed
        redis_server.stop()
        try:
            start = time.monotonic()
            down = run.check(op)
            assert time.monotonic() - start < 2.0
            assert not down.allowed
            assert down.reasons[0].startswith("budget store unavailable")
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
                                           connect_timeout_ms=2000, op_timeout_ms=2000))
        item = ReserveItem(key="k", dimension="tokens", limit=1000, amount=400)
        assert store.reserve("crashed", [item], 100).granted
        os._exit(9)
        """
    )
    p = subprocess.run([sys.executable, "-c", crasher, redis_url], cwd=ROOT, check=False)
    assert p.returncode == 9
    store = RedisStore(settings(redis_url))
    item = ReserveItem(key="k", dimension="tokens", limit=1000, amount=0)
    assert store.states([item])[0].reserved == 400
    time.sleep(0.3)
    assert [e.reservation_id for e in store.expire()] == ["crashed"]
    s = store.states([item])[0]
    assert (s.used, s.reserved) == (400, 0)
    store.close()


def test_an_unreachable_server_is_unavailable_not_an_allow() -> None:
    store = RedisStore(settings("redis://127.0.0.1:1/0", timeout_ms=100))
    with pytest.raises(StoreUnavailable, match="budget store unavailable"):
        store.reserve("x", [ReserveItem(key="k", dimension="calls", limit=1, amount=1)], 1000)
