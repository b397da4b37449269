"""Reserve + settle throughput of every store, beside the ``limits`` library.

    python bench/bench_store.py [--quick]

Each guardpool pair is a full fail-fast reservation over 2 limits x 3
dimensions (calls, tokens, cost) followed by its settle: 2 atomic steps. The
reference is the ``limits`` library's moving-window ``hit`` (one counter, one
dimension, 1 atomic step) on the same storage, measured in the same run. Redis
runs on a redis-server this script starts on a free loopback port; PostgreSQL on
a server it makes with initdb in a temporary directory (``limits`` has no
PostgreSQL storage, so those rows compare only with the other stores).

Single-process rows alternate three runs of each side and print the medians.
Several workers (threads of one process, or processes) share one store; each
opens its store and does one warm-up step, then all start together at a
barrier, so start-up is not timed: the rate is all pairs over the span from the
first start to the last finish.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import limits
import redis
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from guardpool.policy.config import StoreConfig
from guardpool.store import open_store
from guardpool.store.base import BudgetStore, ReserveItem
from tests.conftest import PG_PASSWORD, PostgresServer, RedisServer, postgres_bindir

BIG = 10**15
_LOOPS = itertools.count()

# A target is a StoreConfig (guardpool) or a limits storage URI (the reference).
Target = StoreConfig | str


def items(host: str) -> list[ReserveItem]:
    return [
        ReserveItem(key=f"{pattern}|{host}", dimension=dim, limit=BIG, amount=amount)
        for pattern in ("exe:llm:*", "*")
        for dim, amount in (("calls", 1), ("tokens", 1000), ("cost", 2500))
    ]


def prepare(target: Target, host: str, store: BudgetStore | None = None) -> Callable[[int], None]:
    """A loop of ``n`` pairs (or hits), after one untimed warm-up step."""
    if isinstance(target, str):
        limiter = MovingWindowRateLimiter(storage_from_string(target))
        item = limits.parse("1000000000/hour")
        limiter.hit(item, host)

        def hits(n: int) -> None:
            for _ in range(n):
                limiter.hit(item, host)

        return hits

    s = store if store is not None else open_store(target)
    its = items(host)
    s.states(its)
    # Ids unique to this loop: a repeated id is an idempotent retry, which every
    # store answers from the stored record (cheaper than a fresh pair) -- the
    # alternating rounds used to replay the first round's ids and report retries.
    tag = next(_LOOPS)

    def pairs(n: int) -> None:
        for i in range(n):
            rid = f"{host}-{tag}-{i}"
            s.reserve(rid, its, 60_000)
            s.settle(rid, {"tokens": 900, "cost": 2250})

    return pairs


def timed(run: Callable[[int], None], n: int) -> tuple[float, float]:
    start = time.monotonic()
    run(n)
    return start, time.monotonic()


def rate(spans: list[tuple[float, float]], n: int) -> float:
    return len(spans) * n / (max(e for _, e in spans) - min(s for s, _ in spans))


def _process(target: Target, host: str, n: int, barrier: ProcessBarrier, out: Any) -> None:
    run = prepare(target, host)
    barrier.wait()
    out.put(timed(run, n))


def in_processes(target: Target, n: int, procs: int) -> float:
    """Aggregate rate of ``procs`` processes sharing one store. CLOCK_MONOTONIC is
    system-wide on Linux, so the spans of different processes compare."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_process, args=(target, f"p{i}", n, barrier, out)) for i in range(procs)
    ]
    for w in workers:
        w.start()
    spans = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return rate(spans, n)


def in_threads(target: Target, n: int, threads: int) -> float:
    """Aggregate rate of ``threads`` threads sharing one store instance."""
    store = open_store(target) if isinstance(target, StoreConfig) else None
    barrier = threading.Barrier(threads)
    spans: list[tuple[float, float]] = []

    def work(host: str) -> None:
        run = prepare(target, host, store)
        barrier.wait()
        spans.append(timed(run, n))

    pool = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if store is not None:
        store.close()
    return rate(spans, n)


def one(target: Target, n: int) -> float:
    store = open_store(target) if isinstance(target, StoreConfig) else None
    result = rate([timed(prepare(target, "h", store), n)], n)
    if store is not None:
        store.close()
    return result


def redis_cpu(url: str) -> float:
    """CPU seconds the redis-server has used (its getrusage, microsecond resolution)."""
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def cpu_per_pair(target: Target, url: str, n: int) -> float:
    """CPU seconds per pair (or hit): this process's plus the redis-server's. Wall
    rates on a shared machine move by tens of per cent with other jobs' load; CPU
    time moves much less, and on a busy machine it is what bounds throughput."""
    store = open_store(target) if isinstance(target, StoreConfig) else None
    run = prepare(target, "c", store)
    server, client = redis_cpu(url), time.process_time()
    run(n)
    used = time.process_time() - client + redis_cpu(url) - server
    if store is not None:
        store.close()
    return used / n


def redis_cpu_rows(ours: Target, url: str, n: int, rounds: int = 3) -> None:
    a, b = [], []
    for _ in range(rounds):
        a.append(cpu_per_pair(ours, url, n))
        b.append(cpu_per_pair(url, url, n))
    pair, hit = statistics.median(a), statistics.median(b)
    print(
        f"redis CPU (client + server), medians of {rounds} alternating runs: "
        f"{pair * 1e6:.0f} us per pair, {hit * 1e6:.0f} us per limits hit: "
        f"{hit / pair:.2f}x pairs per hit per CPU-second"
    )


def alternating(ours: Target, ref: Target, n: int, rounds: int = 3) -> tuple[float, float]:
    """Medians of ``rounds`` alternating single-process runs: a burst of load from
    elsewhere (the machine may be shared) then lands on both sides, not on one."""
    a, b = [], []
    for _ in range(rounds):
        a.append(one(ours, n))
        b.append(one(ref, n))
    return statistics.median(a), statistics.median(b)


Row = tuple[str, float, str, float | None]


def postgres_rows(n: int) -> list[Row]:
    """PostgreSQL beside the others: its own server (initdb, free port), once with
    fsync on (a commit survives a power loss) and once off (it survives a killed
    server, not a power loss: what SQLite's synchronous=NORMAL in WAL promises)."""
    bindir = postgres_bindir()
    if bindir is None:
        print("(PostgreSQL not installed: postgres rows skipped)")
        return []
    os.environ["PGPASSWORD"] = PG_PASSWORD
    rows: list[Row] = []
    for fast in (False, True):
        server = PostgresServer(bindir, fast=fast)
        try:
            server.start()
            server.bootstrap()
            pg = StoreConfig(backend="postgres", url=server.url, op_timeout_ms=30_000)
            label = "postgres" + (" nofsync" if fast else "")
            rows.append((f"{label}, 1 proc", one(pg, n), "", None))
            rows.append((f"{label}, 4 procs", in_processes(pg, n // 4, 4), "", None))
        finally:
            server.cleanup()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    n = 300 if parser.parse_args().quick else 3000
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as d:
        mem = StoreConfig(backend="memory")
        ours_mem, lim_mem = alternating(mem, "memory://", n)
        rows.append(("memory, 1 thread", ours_mem, "limits memory://", lim_mem))
        rows.append(("memory, 4 threads", in_threads(mem, n // 4, 4), "", None))
        sql = StoreConfig(backend="sqlite", path=str(Path(d) / "b.db"))
        rows.append(("sqlite, 1 proc", one(sql, n), "(no sqlite in limits)", None))
        rows.append(("sqlite, 4 threads", in_threads(sql, n // 4, 4), "", None))
        rows.append(("sqlite, 4 procs", in_processes(sql, n // 4, 4), "", None))
        if shutil.which("redis-server"):
            server = RedisServer(Path(d))
            server.start()
            try:
                red = StoreConfig(backend="redis", url=server.url, op_timeout_ms=2000)
                ours, theirs = alternating(red, server.url, n)
                redis_cpu_rows(red, server.url, n)
                rows.append(("redis, 1 proc", ours, "limits redis moving window", theirs))
                rows.append(
                    (
                        "redis, 4 procs",
                        in_processes(red, n // 4, 4),
                        "limits redis, 4 procs",
                        in_processes(server.url, n // 4, 4),
                    )
                )
            finally:
                server.stop()
        else:
            print("(redis-server not installed: redis rows skipped)")
        rows.extend(postgres_rows(n))
    print(f"reserve+settle pairs/s, 2 limits x 3 dimensions per reserve, {n} pairs per row")
    print(
        f"{'guardpool store':19}{'pairs/s':>9}  {'steps/s':>8}   {'reference':27}"
        f"{'hits/s':>8}{'pairs/hit':>11}{'steps/hit':>11}"
    )
    for name, ours, ref, theirs in rows:
        line = f"{name:19}{ours:9.0f}  {2 * ours:8.0f}   {ref:27}"
        if theirs is not None:
            line += f"{theirs:8.0f}{ours / theirs:10.2f}x{2 * ours / theirs:10.2f}x"
        print(line.rstrip())
    print("a pair = reserve + settle = 2 atomic steps over 6 counters each;")
    print("a limits hit = 1 atomic step over 1 counter.")
    print("goals: sqlite >= 5,000 pairs/s from one process; redis pairs/s >= limits' hits/s")


if __name__ == "__main__":
    main()
