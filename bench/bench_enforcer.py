"""check() latency against a bare pool job, and check()+settle() throughput.

    python bench/bench_enforcer.py [--quick] [--rounds N]

Every figure is measured in this run, on this machine, and printed beside the
baseline it is judged against (the machine may be shared: read the ratios).

1. Latency. Policy: 3 guards (2 RE2 banks, 1 callable) and 2 limits; SQLite
   store and ledger in one file (the embedded default). Baseline: a bare
   ``GuardPool.submit_guard`` job of the same callable on the same pool.
   Goals: check() p50 <= 2x the bare job, p99 <= 4x.
2. Throughput. Policy: 2 RE2 banks (regex-only guards) and 2 limits.
   check()+settle() pairs per second from one thread, on SQLite (store and
   ledger in one file) and on the memory store (ledger in SQLite). Baseline:
   bare SQLite write transactions per second on a file in the same directory,
   halved, since a pair needs two commits (the check's, the settle's) whatever
   the code does. Goals: SQLite >= 5,000 pairs/s, memory >= 20,000 pairs/s.
   Rates are also given per CPU-second of this process (time.process_time),
   which a busy machine disturbs less than wall time.

Rounds alternate the variants and the medians are printed, so a burst of load
from elsewhere does not land on one variant only.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guardpool import Enforcer, Operation, Usage

BANKS = [
    {
        "name": "keys",
        "ops": ["exe:llm:*"],
        "deny_regex": [
            "AKIA[0-9A-Z]{16}",
            "-----BEGIN [A-Z ]*PRIVATE KEY-----",
            "gh[pousr]_[A-Za-z0-9]{36}",
        ],
    },
    {
        "name": "injection",
        "ops": ["exe:llm:*"],
        "deny_regex": [
            "(?i)ignore (all )?previous instructions",
            "(?i)you are now in developer mode",
        ],
    },
]
CALLABLE = {"name": "callable", "ops": ["exe:llm:*"], "call": "examples.bench_guards:allow"}
LIMITS = {
    "exe:llm:*": {"calls": 10**9, "tokens": 10**12, "cost": "$1000000"},
    "*": {"calls": 10**9},
}
TEXT = "please summarise this document " * 32  # ~1 KB
OP = Operation(labels=("exe:llm:gpt-4o",), input=TEXT, estimate=Usage(tokens=100))


def policy(db: Path, backend: str, guards: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pool": {"workers": 2},
        "guard": guards,
        "limits": LIMITS,
        "store": {"backend": backend, "path": str(db)},
        "audit": {"path": str(db)},
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_each(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def rates(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(per wall second, per CPU second of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)


def bare_transactions(path: Path, n: int) -> Callable[[], tuple[float, float]]:
    """A small write transaction per call on a WAL file with synchronous=NORMAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload TEXT)")

    def one() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (payload) VALUES (?)", ("x" * 400,))
        conn.execute("COMMIT")

    return lambda: rates(one, n)


def latency(tmp: Path, n: int, rounds: int) -> None:
    bare: list[float] = []
    check: list[float] = []
    with Enforcer.from_config(policy(tmp / "latency.db", "sqlite", [*BANKS, CALLABLE])) as e:
        assert e.pool is not None
        pool = e.pool
        run = e.run("bench")
        for _ in range(50):  # warm up workers and pages
            run.settle(run.check(OP), Usage(tokens=90))
        for _ in range(rounds):
            bare += time_each(
                lambda: pool.submit_guard("callable", TEXT, labels=OP.labels).result(), n
            )
            check += time_each(lambda: run.check(OP), n)
    print(f"1. check() latency: 3 guards (2 banks + 1 callable) + 2 limits, sqlite, n={len(check)}")
    print(f"{'':26}{'p50 ms':>10}{'p99 ms':>10}")
    for name, s in (("bare pool job", bare), ("check()", check)):
        print(f"{name:26}{statistics.median(s):10.3f}{percentile(s, 0.99):10.3f}")
    r50 = statistics.median(check) / statistics.median(bare)
    r99 = percentile(check, 0.99) / percentile(bare, 0.99)
    print(f"ratio check/bare: p50 {r50:.2f}x (goal <= 2x), p99 {r99:.2f}x (goal <= 4x)")


def throughput(tmp: Path, n: int, rounds: int) -> None:
    variants: dict[str, Callable[[], tuple[float, float]]] = {}
    opened = []
    for backend in ("sqlite", "memory"):
        e = Enforcer.from_config(policy(tmp / f"{backend}.db", backend, BANKS)).start()
        opened.append(e)
        run = e.run(backend)

        def pair(run: Any = run) -> None:
            run.settle(run.check(OP), Usage(tokens=90))

        for _ in range(50):
            pair()
        variants[backend] = lambda pair=pair: rates(pair, n)
    variants["bare sqlite txn"] = bare_transactions(tmp / "bare.db", n)
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, measure in variants.items():
            got[name].append(measure())
    for e in opened:
        e.close()
    wall = {k: statistics.median(r[0] for r in v) for k, v in got.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in got.items()}
    floor_wall, floor_cpu = wall["bare sqlite txn"] / 2, cpu["bare sqlite txn"] / 2
    print()
    print(f"2. check()+settle() pairs/s: 2 RE2 banks + 2 limits, {rounds} rounds x {n} pairs")
    print(f"{'':26}{'per wall s':>12}{'per CPU s':>12}{'goal':>9}")
    for name, goal in (("sqlite (one file)", 5000), ("memory store", 20000)):
        key = name.split()[0]
        print(f"{name:26}{wall[key]:12.0f}{cpu[key]:12.0f}{goal:9,}")
    print(f"{'floor: bare txn/s / 2':26}{floor_wall:12.0f}{floor_cpu:12.0f}")
    print(
        f"sqlite pairs / floor: {wall['sqlite'] / floor_wall:.2f}x wall, "
        f"{cpu['sqlite'] / floor_cpu:.2f}x CPU; memory pairs / floor: "
        f"{wall['memory'] / floor_wall:.2f}x wall, {cpu['memory'] / floor_cpu:.2f}x CPU"
    )
    for name, goal in (("sqlite", 5000), ("memory", 20000)):
        if goal > floor_cpu:
            # Each pair commits the SQLite ledger twice (the check's decision, the
            # settle's) before it answers: no code above the ledger can pass this.
            print(
                f"note: the {name} goal ({goal:,}/s) is above this machine's floor "
                f"({floor_cpu:,.0f}/s per CPU s) for two ledger commits per pair"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    with tempfile.TemporaryDirectory() as d:
        latency(Path(d), n, args.rounds)
        throughput(Path(d), n, args.rounds)


if __name__ == "__main__":
    main()
