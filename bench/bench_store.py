"""Reserve + settle throughput of every store, beside the ``limits`` library.

    python bench/bench_store.py [--quick]

Each guardpool pair is a full fail-fast reservation over 2 limits x 3
dimensions (calls, tokens, cost) followed by its settle: 2 atomic steps. The
reference is the ``limits`` library's moving-window ``hit`` (one counter, one
dimension) on the same storage, measured in the same run. Redis runs on a
redis-server this script starts on a free loopback port.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import limits
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from guardpool.policy.config import StoreConfig
from guardpool.store import open_store
from guardpool.store.base import ReserveItem
from tests.conftest import RedisServer

BIG = 10**15


def items(host: str) -> list[ReserveItem]:
    return [
        ReserveItem(key=f"{pattern}|{host}", dimension=dim, limit=BIG, amount=amount)
        for pattern in ("exe:llm:*", "*")
        for dim, amount in (("calls", 1), ("tokens", 1000), ("cost", 2500))
    ]


def guardpool_pairs(config: StoreConfig, n: int, host: str) -> float:
    store = open_store(config)
    its = items(host)
    start = time.perf_counter()
    for i in range(n):
        rid = f"{host}-{i}"
        store.reserve(rid, its, 60_000)
        store.settle(rid, {"tokens": 900, "cost": 2250})
    elapsed = time.perf_counter() - start
    store.close()
    return n / elapsed


def limits_hits(uri: str, n: int, host: str) -> float:
    limiter = MovingWindowRateLimiter(storage_from_string(uri))
    item = limits.parse("1000000000/hour")
    start = time.perf_counter()
    for _ in range(n):
        limiter.hit(item, host)
    return n / (time.perf_counter() - start)


def _worker(args: tuple[str, object, int, str]) -> float:
    kind, target, n, host = args
    if kind == "guardpool":
        assert isinstance(target, StoreConfig)
        return guardpool_pairs(target, n, host)
    assert isinstance(target, str)
    return limits_hits(target, n, host)


def parallel(kind: str, target: object, n: int, procs: int) -> float:
    """Aggregate rate of ``procs`` processes sharing one store (all start together)."""
    with mp.get_context("spawn").Pool(procs) as pool:
        start = time.perf_counter()
        pool.map(_worker, [(kind, target, n, f"p{i}") for i in range(procs)])
        return procs * n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    n = 500 if parser.parse_args().quick else 3000
    rows: list[tuple[str, float, str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        mem = StoreConfig(backend="memory")
        sql = StoreConfig(backend="sqlite", path=str(Path(d) / "b.db"))
        rows.append(
            (
                "memory, 1 proc",
                guardpool_pairs(mem, n, "h"),
                "limits memory://",
                limits_hits("memory://", n, "h"),
            )
        )
        rows.append(
            ("sqlite, 1 proc", guardpool_pairs(sql, n, "h"), "limits memory://", rows[0][3])
        )
        rows.append(
            (
                "sqlite, 4 procs",
                parallel("guardpool", sql, n // 2, 4),
                "limits memory://",
                rows[0][3],
            )
        )
        if shutil.which("redis-server"):
            redis = RedisServer(Path(d))
            redis.start()
            url = redis.url
            try:
                red = StoreConfig(backend="redis", url=url, op_timeout_ms=2000)
                ours1 = guardpool_pairs(red, n, "h")
                theirs1 = limits_hits(url, n, "h")
                rows.append(("redis, 1 proc", ours1, "limits redis moving window", theirs1))
                ours4 = parallel("guardpool", red, n // 2, 4)
                theirs4 = parallel("limits", url, n // 2, 4)
                rows.append(("redis, 4 procs", ours4, "limits redis, 4 procs", theirs4))
            finally:
                redis.stop()
        else:
            print("(redis-server not installed: redis rows skipped)")
    print(f"reserve+settle pairs/s (2 limits x 3 dimensions), n={n} per process")
    print(f"{'guardpool store':20}{'pairs/s':>10}   {'reference':28}{'ops/s':>10}{'ratio':>8}")
    for name, ours, ref, theirs in rows:
        print(f"{name:20}{ours:10.0f}   {ref:28}{theirs:10.0f}{ours / theirs:8.2f}x")
    print("goals: sqlite >= 5,000 pairs/s from one process; redis >= 1x limits' moving window")
    print("a pair is 2 atomic steps over 6 counters; a limits hit is 1 step over 1 counter:")
    for name, ours, _ref, theirs in rows:
        if name.startswith("redis"):
            print(
                f"  {name}: atomic steps/s {2 * ours:.0f} vs {theirs:.0f} = "
                f"{2 * ours / theirs:.2f}x"
            )


if __name__ == "__main__":
    main()
