"""Row locks or SERIALIZABLE for the PostgreSQL store? Measured, side by side.

    python bench/bench_pg_locking.py [--quick]

Starts its own PostgreSQL (initdb in a temporary directory) on a free loopback
port, with fsync off: what differs between the modes is waiting and retrying,
and a disk flush per commit (about 10 ms on this machine's virtual disk) would
hide it. Each row runs P processes doing reserve+settle pairs of one
item, all started together at a barrier, in two workloads:

- hot: every process charges the same counter (a team's global budget): the
  case where the two modes differ;
- disjoint: each process its own counter (per-run budgets): no conflicts.

Reported: pairs/s over the span from the first start to the last finish, and
transactions run again after a serialization failure (SERIALIZABLE only; row
locks wait instead of failing).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import uuid
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guardpool.store.base import ReserveItem
from guardpool.store.postgres import PostgresStore
from tests.conftest import PG_PASSWORD, PostgresServer, postgres_bindir


def _worker(url: str, schema: str, mode: str, key: str, n: int, barrier: Barrier, out: Any) -> None:
    store = PostgresStore(
        SimpleNamespace(url=url, key_prefix=schema, connect_timeout_ms=2000, op_timeout_ms=30000),
        serializable=mode == "serializable",
        pool_size=1,
    )
    item = [ReserveItem(key=key, dimension="cost", limit=10**15, amount=2500)]
    store.states(item)  # warm-up: migrated, connected, counter row created
    barrier.wait()
    start = time.monotonic()
    for i in range(n):
        rid = f"{key}-{os.getpid()}-{i}"
        store.reserve(rid, item, 60_000)
        store.settle(rid, {"cost": 2250})
    out.put((start, time.monotonic(), store._pg.retries))
    store.close()


def measure(url: str, mode: str, workload: str, procs: int, n: int) -> tuple[float, int]:
    schema = "b_" + uuid.uuid4().hex[:10]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker,
            args=(url, schema, mode, "hot" if workload == "hot" else f"own{i}", n, barrier, out),
        )
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    spans = [out.get(timeout=900) for _ in workers]
    for w in workers:
        w.join()
    rate = procs * n / (max(e for _, e, _ in spans) - min(s for s, _, _ in spans))
    return rate, sum(r for _, _, r in spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    n = 100 if parser.parse_args().quick else 500
    bindir = postgres_bindir()
    if bindir is None:
        sys.exit("PostgreSQL (initdb, postgres) is not installed")
    server = PostgresServer(bindir, fast=True)
    server.start()
    try:
        server.bootstrap()
        os.environ["PGPASSWORD"] = PG_PASSWORD
        print(f"reserve+settle pairs/s, {n} pairs per process, fsync off; machine shared")
        print(
            f"{'workload':10}{'procs':>6}{'row locks':>12}{'serializable':>14}"
            f"{'ratio':>8}{'retries':>9}"
        )
        for workload in ("hot", "disjoint"):
            for procs in (1, 4, 8):
                rows, _ = measure(server.url, "rows", workload, procs, n)
                ser, retries = measure(server.url, "serializable", workload, procs, n)
                print(
                    f"{workload:10}{procs:>6}{rows:>12.0f}{ser:>14.0f}"
                    f"{ser / rows:>7.2f}x{retries:>9}"
                )
        print("ratio = serializable / row locks; retries = serializable transactions run again")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
